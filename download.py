"""
One careful file download, shared by model.py (GPT-2 weights) and the prepare scripts (datasets).

- A file already at `path` is trusted and no request is made (the cache).
- Bytes go to `path + ".incomplete"` first; an interrupted download resumes from there with an HTTP Range
  request, and only a complete, verified file is moved into place with os.replace. So a crash, a Ctrl-C
  or a full disk never leaves a half-written file under the real name, where a later run would trust it.
- The file is checked against a sha256 when one is known: given by the caller, or sent by the server
  (the Hugging Face hub sends it as `X-Linked-Etag` for large files). A mismatch deletes the bytes and raises.

Every failure is a DownloadError: a UserError whose one line says what happened and where to put the file by
hand (errors.py), so the scripts report it as it is.
"""

import hashlib
import os
import re

import requests
from tqdm import tqdm

from errors import UserError

CHUNK = 1 << 20


class DownloadError(UserError):
    """A download that did not come: offline, a server's error, a cut-off or corrupt file. status is the HTTP
    status when the server answered (404: it has no such file)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_from_headers(response: requests.Response) -> str | None:
    # The hub answers /resolve/ for large (LFS) files with a redirect whose X-Linked-Etag is the sha256 of the
    # content. A plain ETag is not used: servers put all sorts of hashes there (git blob ids, hashes of the
    # compressed bytes), and a false mismatch would make a good file undownloadable.
    for r in [*response.history, response]:
        value = r.headers.get("X-Linked-Etag", "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def download(url: str, path: str, sha256: str | None = None, desc: str | None = None) -> str:
    """Download url to path (cached, resumable, verified, atomic). Returns path."""
    if os.path.exists(path):
        return path
    partial = path + ".incomplete"
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    # Byte offsets must mean the same thing in every request, so no transparent compression.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = requests.get(url, stream=True, headers=headers, timeout=30)
    except requests.RequestException as e:
        raise DownloadError(f"could not download {url} ({type(e).__name__}). If this machine is offline, "
                            f"put the file there yourself: {path}") from None
    with response:
        if response.status_code == 404:
            raise DownloadError(f"{url} does not exist (HTTP 404)", status=404)
        if response.status_code not in (200, 206, 416):
            raise DownloadError(f"could not download {url}: HTTP {response.status_code}. Put the file at {path}",
                                status=response.status_code)
        expected = sha256 or _sha256_from_headers(response)
        if response.status_code == 416:
            # Nothing left to send after our partial file. Trust it only if it is exactly the remote size;
            # anything else is stale bytes of another version of the file.
            remote_size = response.headers.get("Content-Range", "").rpartition("/")[2]
            if not remote_size.isdigit() or int(remote_size) != have:
                os.remove(partial)
                raise DownloadError(f"stale partial download of {url} removed ({have} bytes, remote "
                                   f"{remote_size or 'unknown'}); run again to download afresh")
        else:
            if response.status_code == 200:
                have = 0  # the server ignored our Range header: start again from byte 0
            elif not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                os.remove(partial)
                raise DownloadError(f"{url} resumed at the wrong offset; the partial file was removed, run again")
            total = int(response.headers.get("Content-Length", 0)) + have or None
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # only now: no empty folder
            with open(partial, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc or os.path.basename(path),
            ) as bar:
                try:
                    for block in response.iter_content(CHUNK):
                        f.write(block)
                        bar.update(len(block))
                except requests.RequestException as e:
                    raise DownloadError(
                        f"download of {url} was cut off ({type(e).__name__}); run again to resume from {partial}"
                    ) from None
            if total is not None and os.path.getsize(partial) < total:  # the server closed early, silently
                raise DownloadError(f"download of {url} was cut off; run again to resume from {partial}")
    if expected is not None:
        got = sha256_of(partial)
        if got != expected:
            os.remove(partial)  # never keep bytes we know are wrong; the next call starts afresh
            raise DownloadError(f"sha256 mismatch for {url}: expected {expected}, got {got}. Nothing was saved.")
    os.replace(partial, path)
    return path
