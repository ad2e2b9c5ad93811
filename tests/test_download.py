"""download.py and GPT.from_pretrained("org/name") end to end, against a local stand-in for the hub.

The server (stdlib http.server on 127.0.0.1, an ephemeral port, a background thread) serves files this test
made at /{org}/{name}/resolve/main/{file}, like huggingface.co: the sha256 of large files in a quoted
X-Linked-Etag header, a git sha1 ETag on small ones, Range requests answered with 206, and faults on demand
(corrupted bytes, a connection cut half-way, a server that ignores Range, 404s). It logs every request.
"""

import hashlib
import io
import os
import re
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

import download as dl
from model import GPT

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

REPO = "org/name"


pytestmark = pytest.mark.usefixtures("one_thread")


class Hub:
    """What the server serves and how it misbehaves; the handler reads it, the tests set it."""

    def __init__(self):
        self.files: dict[str, bytes] = {}  # url path -> the true content
        self.corrupt: set[str] = set()  # url paths served with flipped bytes (but the true sha256 header)
        self.cut_next: set[str] = set()  # url paths whose next answer stops half-way through the body
        self.no_etag: set[str] = set()  # url paths served without any sha header
        self.ignore_range = False
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.lock = threading.Lock()
        self.url = ""

    def publish(self, repo: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.files[f"/{repo}/resolve/main/{name}"] = data

    def log(self, repo: str = REPO):
        with self.lock:
            return [(p.removeprefix(f"/{repo}/resolve/main/"), r, s) for p, r, s in self.requests]


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, closed after the answer (so a short body is a cut-off).
        def log_message(self, *args):
            pass

        def do_GET(self):
            path, rng = self.path, self.headers.get("Range")
            data = hub.files.get(path)
            if data is None:
                return self._answer(path, rng, 404, b"", {})
            headers = {}
            if path not in hub.no_etag:
                if len(data) > 10_000:  # the hub: sha256 of LFS files in X-Linked-Etag (quoted)
                    headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                    headers["ETag"] = '"not-a-sha256"'
                else:  # small files: a git blob sha1, which must not be mistaken for a sha256
                    headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
            body = bytes(b ^ 0xFF for b in data[:64]) + data[64:] if path in hub.corrupt else data
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not hub.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    headers["Content-Range"] = f"bytes */{len(body)}"
                    return self._answer(path, rng, 416, b"", headers)
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                return self._answer(path, rng, 206, body[start:], headers)
            return self._answer(path, rng, 200, body, headers)

        def _answer(self, path, rng, status, body, headers):
            with hub.lock:
                hub.requests.append((path, rng, status))
                cut = path in hub.cut_next and status in (200, 206)
                hub.cut_next.discard(path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))  # the full length, even when we cut
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture
def hub(monkeypatch, tmp_path):
    hub = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    _offline_env(monkeypatch, tmp_path, hub.url)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _offline_env(monkeypatch, tmp_path, endpoint):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("NANOSFT_CACHE", str(tmp_path / "cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def ckpt():
    """A tiny random GPT2LMHeadModel and its files. Its model.safetensors is over 2 MiB, more than two of
    download.py's 1 MiB chunks, so half of it is at least one whole chunk on disk when the connection is cut."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=64, n_positions=32, vocab_size=9000, initializer_range=0.5,
                        bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(config).eval()
    buf = io.BytesIO()
    torch.save(hf.state_dict(), buf)  # the older layout; transformers 5 only writes safetensors
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        files = {n: Path(d, n).read_bytes() for n in ("config.json", "model.safetensors")}
    files["pytorch_model.bin"] = buf.getvalue()
    assert len(files["model.safetensors"]) > 2 * dl.CHUNK + 1000
    return hf, files


def cache_dir(tmp_path, repo=REPO):
    return tmp_path / "cache" / repo


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*.incomplete")) if folder.exists() else []


def assert_matches_hf(model, hf):
    idx = torch.randint(0, hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------------------------------------


def test_first_call_downloads_then_the_cache_makes_no_request(hub, ckpt, tmp_path, capfd):
    hf, files = ckpt
    hub.publish(REPO, {"config.json": files["config.json"], "model.safetensors": files["model.safetensors"]})
    capfd.readouterr()
    model = GPT.from_pretrained(REPO)
    err = capfd.readouterr().err
    assert f"{REPO}/model.safetensors" in err and "100%" in err, f"no tqdm progress on stderr: {err!r}"
    assert hub.log() == [("config.json", None, 200), ("model.safetensors", None, 200)]
    folder = cache_dir(tmp_path)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert (folder / "config.json").read_bytes() == files["config.json"]
    assert leftovers(folder) == []
    assert_matches_hf(model, hf)

    again = GPT.from_pretrained(REPO)
    assert len(hub.log()) == 2, f"the second call made requests: {hub.log()[2:]}"
    assert_matches_hf(again, hf)


def test_gpt2_alias_is_fetched_from_openai_community(hub, ckpt, tmp_path):
    hf, files = ckpt
    hub.publish("openai-community/gpt2", {n: files[n] for n in ("config.json", "model.safetensors")})
    assert_matches_hf(GPT.from_pretrained("gpt2"), hf)
    assert (cache_dir(tmp_path, "openai-community/gpt2") / "model.safetensors").exists()


def test_cache_dir_argument_overrides_the_environment(hub, ckpt, tmp_path):
    hf, files = ckpt
    hub.publish(REPO, {n: files[n] for n in ("config.json", "model.safetensors")})
    assert_matches_hf(GPT.from_pretrained(REPO, cache_dir=str(tmp_path / "elsewhere")), hf)
    assert (tmp_path / "elsewhere" / REPO / "model.safetensors").exists()
    assert not cache_dir(tmp_path).exists()


def test_corrupted_bytes_raise_and_leave_nothing(hub, ckpt, tmp_path):
    hf, files = ckpt
    hub.publish(REPO, {n: files[n] for n in ("config.json", "model.safetensors")})
    hub.corrupt.add(f"/{REPO}/resolve/main/model.safetensors")
    with pytest.raises(dl.DownloadError, match="sha256"):
        GPT.from_pretrained(REPO)
    folder = cache_dir(tmp_path)
    assert not (folder / "model.safetensors").exists()
    assert leftovers(folder) == []

    hub.corrupt.clear()  # the next call starts afresh (no Range on known-bad bytes) and succeeds
    assert_matches_hf(GPT.from_pretrained(REPO), hf)
    assert hub.log()[-1] == ("model.safetensors", None, 200)


def _cut_once(hub, tmp_path, files):
    """Publish the checkpoint, cut the weights' download half-way; return the size of the .incomplete file."""
    hub.publish(REPO, {n: files[n] for n in ("config.json", "model.safetensors")})
    hub.cut_next.add(f"/{REPO}/resolve/main/model.safetensors")
    with pytest.raises(dl.DownloadError):
        GPT.from_pretrained(REPO)
    folder = cache_dir(tmp_path)
    assert not (folder / "model.safetensors").exists()
    partial = folder / "model.safetensors.incomplete"
    assert partial.exists()
    have = partial.stat().st_size
    assert 0 < have < len(files["model.safetensors"])
    assert partial.read_bytes() == files["model.safetensors"][:have]
    return have


def test_cut_off_download_resumes_with_a_range_request(hub, ckpt, tmp_path):
    hf, files = ckpt
    have = _cut_once(hub, tmp_path, files)
    model = GPT.from_pretrained(REPO)
    assert hub.log()[-1] == ("model.safetensors", f"bytes={have}-", 206)
    folder = cache_dir(tmp_path)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert leftovers(folder) == []
    assert_matches_hf(model, hf)


@pytest.mark.parametrize("etag", [True, False], ids=["with-sha", "no-sha"])
def test_server_ignoring_range_still_gives_the_right_file(hub, ckpt, tmp_path, etag):
    hf, files = ckpt
    if not etag:  # no checksum to catch an append: the 200 itself must restart the file
        hub.no_etag.add(f"/{REPO}/resolve/main/model.safetensors")
    have = _cut_once(hub, tmp_path, files)
    hub.ignore_range = True
    model = GPT.from_pretrained(REPO)
    assert hub.log()[-1] == ("model.safetensors", f"bytes={have}-", 200)
    folder = cache_dir(tmp_path)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert leftovers(folder) == []
    assert_matches_hf(model, hf)


def test_404_for_safetensors_falls_back_to_pytorch_model_bin(hub, ckpt, tmp_path):
    hf, files = ckpt
    hub.publish(REPO, {n: files[n] for n in ("config.json", "pytorch_model.bin")})
    model = GPT.from_pretrained(REPO)
    assert hub.log() == [("config.json", None, 200), ("model.safetensors", None, 404),
                         ("pytorch_model.bin", None, 200)]
    folder = cache_dir(tmp_path)
    assert not (folder / "model.safetensors").exists()
    assert (folder / "pytorch_model.bin").read_bytes() == files["pytorch_model.bin"]
    assert leftovers(folder) == []
    assert_matches_hf(model, hf)
    GPT.from_pretrained(REPO)
    assert len(hub.log()) == 3, "the cached pytorch_model.bin must be used without asking for safetensors again"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting to it is refused


def test_no_server_and_no_cache_names_where_to_put_the_file(monkeypatch, tmp_path, ckpt):
    _offline_env(monkeypatch, tmp_path, f"http://127.0.0.1:{_closed_port()}")
    folder = cache_dir(tmp_path)
    with pytest.raises(dl.DownloadError) as e:
        GPT.from_pretrained(REPO)
    assert str(folder / "config.json") in str(e.value)
    assert "config.json and model.safetensors" in str(e.value), "one message names every file to place"
    assert not folder.exists(), "a failed name leaves no empty cache folder behind"

    # With the config already there, the message points at the weights.
    _, files = ckpt
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(files["config.json"])
    with pytest.raises(dl.DownloadError) as e:
        GPT.from_pretrained(REPO)
    assert str(folder / "model.safetensors") in str(e.value)

    # And once the user puts the weights there, no network is needed at all.
    (folder / "model.safetensors").write_bytes(files["model.safetensors"])
    assert_matches_hf(GPT.from_pretrained(REPO), ckpt[0])


def test_download_with_a_wrong_explicit_sha256_raises_and_leaves_nothing(hub, tmp_path):
    data = os.urandom(300_000)
    hub.files["/data/blob.bin"] = data
    url, path = f"{hub.url}/data/blob.bin", tmp_path / "d" / "blob.bin"
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download(url, str(path), sha256="0" * 64)  # the server's (right) X-Linked-Etag must not override it
    assert not path.exists() and not (tmp_path / "d" / "blob.bin.incomplete").exists()

    good = hashlib.sha256(data).hexdigest()
    assert dl.download(url, str(path), sha256=good) == str(path)
    assert path.read_bytes() == data
    assert dl.sha256_of(str(path)) == good
    n = len(hub.requests)
    dl.download(url, str(path), sha256="0" * 64)  # a file already in place is trusted: no request
    assert len(hub.requests) == n


def test_small_file_etag_sha1_is_not_taken_for_a_sha256(hub, tmp_path):
    data = b'{"a": 1}'
    hub.files["/data/small.json"] = data  # served with ETag = its git-style sha1 (40 hex digits)
    path = tmp_path / "small.json"
    dl.download(f"{hub.url}/data/small.json", str(path))
    assert path.read_bytes() == data


def test_404_raises_file_not_found_and_leaves_nothing(hub, tmp_path):
    """A failed download is a user's error (errors.UserError: one line), with the 404 told apart."""
    from errors import UserError

    path = tmp_path / "missing.bin"
    with pytest.raises(dl.DownloadError) as e:
        dl.download(f"{hub.url}/nothing/here", str(path))
    assert e.value.status == 404 and isinstance(e.value, UserError)
    assert not path.exists() and not (tmp_path / "missing.bin.incomplete").exists()


def test_complete_partial_file_answered_416_is_finished(hub, tmp_path):
    """A crash between the last byte and os.replace: the resume asks for bytes past the end and gets 416."""
    data = os.urandom(50_000)
    hub.files["/data/blob.bin"] = data
    path = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.incomplete").write_bytes(data)
    dl.download(f"{hub.url}/data/blob.bin", str(path))
    assert hub.requests[-1] == ("/data/blob.bin", f"bytes={len(data)}-", 416)
    assert path.read_bytes() == data
    assert not (tmp_path / "blob.bin.incomplete").exists()


@pytest.mark.parametrize("etag", [True, False], ids=["with-sha", "no-sha"])
def test_partial_file_longer_than_the_remote_file_is_never_promoted(hub, tmp_path, etag):
    """A .incomplete longer than the file (the remote file changed, or junk was appended) also gets a 416.
    download.py treats every 416 as "already complete" and moves the partial into place unverified (it
    ignores the 416's X-Linked-Etag and never compares the Content-Range total with the partial's size)."""
    data = os.urandom(50_000)
    hub.files["/data/blob.bin"] = data
    if not etag:
        hub.no_etag.add("/data/blob.bin")
    path = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.incomplete").write_bytes(data + b"junk appended by an earlier, different file")
    try:
        dl.download(f"{hub.url}/data/blob.bin", str(path))
    except dl.DownloadError:
        pass  # refusing is fine; installing wrong bytes under the real name is not
    assert not path.exists() or path.read_bytes() == data, "a wrong file was moved into place under the real name"
