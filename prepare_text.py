"""
Prepare a plain-text corpus (Tiny Shakespeare by default) for pretraining: text -> GPT-2 BPE token ids.

    python prepare_text.py                                    # downloads input.txt into data/shakespeare
    python prepare_text.py --input my_book.txt --out_dir data/my_book

Output, in out_dir (nanoGPT's format): train.bin and val.bin, np.uint16 token ids, plus meta.json (written
last). The first (1 - val_fraction) of the text's characters are train, the rest val. Plain text has no
turns, so there is no template and no loss mask: every token is a target. Special-token strings in the text
("<|endoftext|>") are encoded as the ordinary characters they are.
"""

import os

import numpy as np

import chat_template
import data
import errors
from download import download
from errors import UserError

DEFAULT_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def read_text(path: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"input file {path!r} does not exist (or is not a file)")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start}. Convert it first, "
            f"e.g. iconv -f latin1 -t utf-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path} is empty (or only whitespace): there is nothing to train on")
    return text


def prepare(
    input_path: str | None = None,
    url: str = DEFAULT_URL,
    out_dir: str = "data/shakespeare",
    val_fraction: float = 0.1,
) -> dict:
    """Tokenise one text file into train.bin / val.bin. Returns the meta dict saved as meta.json."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction {val_fraction} must be between 0 and 1 (exclusive), e.g. 0.1")
    if input_path is not None:
        source, path = input_path, input_path
    else:  # (offline, or no such file: a DownloadError, one line)
        source, path = url, download(url, os.path.join(out_dir, "input.txt"))
    text = read_text(path)

    # Split the characters, then tokenise each part: the two files never share a token.
    split_at = int(len(text) * (1 - val_fraction))
    enc = chat_template.get_tokenizer()  # offline without tiktoken's files: a UserError
    train_ids = np.array(enc.encode_ordinary(text[:split_at]), dtype=data.TOKEN_DTYPE)
    val_ids = np.array(enc.encode_ordinary(text[split_at:]), dtype=data.TOKEN_DTYPE)
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise UserError(
            f"{path} is too short ({len(text)} characters) to split into non-empty train and val parts"
        )

    command = ["python", "prepare_text.py", "--input" if input_path is not None else "--url", source,
               "--val_fraction", f"{val_fraction:g}"]
    meta = {
        "command": command,  # what makes this folder again
        "template": "none",
        "tokenizer": enc.name,
        "vocab_size": enc.n_vocab,
        "end_token": chat_template.SPECIAL_TOKENS[chat_template.EOT],
        "source": source,
        "n_train_tokens": len(train_ids),
        "n_val_tokens": len(val_ids),
    }
    data.write_prepared(out_dir, {"train.bin": train_ids, "val.bin": val_ids}, meta)  # meta.json last

    print(f"read {len(text):,} characters from {path}")  # (a download is read from where it was saved)
    print(f"train: {len(train_ids):,} tokens, val: {len(val_ids):,} tokens")
    print(f"wrote {os.path.join(out_dir, 'train.bin')}, val.bin and meta.json")
    return meta


def main(argv=None) -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--input", help="a local UTF-8 text file (instead of downloading --url)")
    parser.add_argument("--url", default=DEFAULT_URL, help="where to download the text when --input is not given")
    parser.add_argument("--out_dir", default="data/shakespeare")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="the last this much of the text is val")
    args = parser.parse_args(argv)
    prepare(input_path=args.input, url=args.url, out_dir=args.out_dir, val_fraction=args.val_fraction)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
