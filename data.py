"""
The prepared data on disk: its formats, written by the prepare scripts and read by the trainers and sample.py.

A prepared folder holds meta.json (written last: a folder with meta.json is complete) and token files:

    pretraining (prepare_text.py)   train.bin, val.bin          np.uint16 token ids, one stream per split
    SFT (prepare_alpaca.py)         {split}_ids.bin             np.uint16 every token of every example, concatenated
                                    {split}_mask.bin            np.uint8 the same length; 1 where a token is a target
                                    {split}_offsets.bin         np.int64 n + 1 entries: example i is ids[o[i]:o[i+1]]
                                    {split}_prompts.json        each example's first user turn, as written in the source

meta.json says what made the folder: "command" (the prepare command, without --out_dir), "template" ('none' for
text), "template_fingerprint", "vocab_size", "end_token", and the counts the files must match. Nothing here needs
the tokenizer: the trainers read ids with np.memmap.
"""

import json
import os
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np

import chat_template
from errors import UserError

if TYPE_CHECKING:  # the type only: data.py runs without torch, so the prepare scripts start fast
    from common import Runtime

TOKEN_DTYPE = np.uint16  # GPT-2's ids (and our chat tokens) are below 2**16


# ----------------------------------------------------------------------------------------------------------
# Writing


def write_prepared(out_dir: str, arrays: dict, meta: dict, prompts: dict | None = None) -> None:
    """Write each {filename: numpy array, or a function that writes the file at the path it is given (a file
    too large to build in memory)}, each {filename: JSON-able prompts} and meta.json under temporary names,
    then move them all into place.

    A reader that finds meta.json can trust the files beside it: the old meta.json is removed before any old
    file is replaced, and the new one arrives only after all of them.
    """
    files = {}  # final path -> temporary path
    try:
        os.makedirs(out_dir, exist_ok=True)
        for filename, array in arrays.items():
            path = os.path.join(out_dir, filename)
            files[path] = path + ".tmp"
            array.tofile(files[path]) if isinstance(array, np.ndarray) else array(files[path])
        for filename, content in {**(prompts or {}), "meta.json": meta}.items():  # meta.json last
            path = os.path.join(out_dir, filename)
            files[path] = path + ".tmp"
            with open(files[path], "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2 if filename == "meta.json" else None, ensure_ascii=False)
                f.write("\n")
        meta_path = os.path.join(out_dir, "meta.json")
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for path, tmp in files.items():  # dicts keep insertion order: meta.json goes last
            os.replace(tmp, path)
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(f"could not write {out_dir}: {e.strerror or e}") from None
    finally:
        for tmp in files.values():  # only left over when something above failed
            if os.path.exists(tmp):
                os.remove(tmp)


# ----------------------------------------------------------------------------------------------------------
# Finding and checking a prepared folder


def read_meta(data_dir: str) -> dict:
    """meta.json of a prepared folder. One prepared by an older nanoSFT, without a field this one reads, is one
    line saying to prepare it again, never a KeyError."""
    with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    text = meta.get("template") == "none"
    needed = ("command", "template", "vocab_size", "end_token",
              *(("n_train_tokens", "n_val_tokens") if text else ("template_fingerprint", "n_train", "n_val")))
    missing = [k for k in needed if k not in meta]
    if missing:
        script = "prepare_text.py" if text else "prepare_alpaca.py"
        again = prepare_command(meta, data_dir) if "command" in meta else f"python {script} ... --out_dir {data_dir}"
        raise UserError(f"data_dir={data_dir} was prepared by an older nanoSFT (its meta.json has no "
                        f"{', '.join(missing)}): prepare it again: `{again}`")
    return meta


def prepare_command(meta: dict, data_dir: str) -> str:
    """The command that prepares data_dir again, as its prepare script recorded it."""
    return shlex.join([*meta["command"], "--out_dir", data_dir])


def prepare_on_demand(data_dir: str, default_dir: str, script: str, runtime: "Runtime") -> dict:
    """The prepared data's meta.json. The default data folder is prepared on first use, so the main command
    works on a fresh clone; any other folder must exist (a typo must not become a download)."""
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        if os.path.normpath(data_dir) != os.path.normpath(default_dir):
            raise UserError(f"data_dir={data_dir} holds no prepared data (meta.json): prepare it with "
                            f"`python {script} --out_dir {data_dir}`, or leave data_dir at its default")
        said_why = False
        if runtime.local_rank == 0:  # once per machine: nodes need not share a filesystem
            print(f"prepared data not found; running: python {script} --out_dir {data_dir}")
            here = os.path.dirname(os.path.abspath(__file__))
            child = subprocess.run([sys.executable, os.path.join(here, script), "--out_dir", data_dir])
            said_why = child.returncode == 2  # its one error: line is above; a second would only repeat it
        runtime.barrier()  # reached on failure too, or the other processes would wait here forever
        if not os.path.exists(os.path.join(data_dir, "meta.json")):
            if said_why or runtime.local_rank != 0:  # said once, by the child or by local rank 0
                raise SystemExit(2)
            raise UserError(f"python {script} --out_dir {data_dir} failed (its message is above); fix that and "
                            f"run again")
    meta = read_meta(data_dir)
    check_template_fingerprint(meta, data_dir)
    return meta


def check_template_fingerprint(meta: dict, data_dir: str) -> None:
    """SFT data must have been rendered the way chat_template.py renders its template now: sample.py and the
    export render prompts with today's code. Pretraining text (template 'none') passes."""
    template = meta["template"]
    if template == "none":
        return
    found, current = meta["template_fingerprint"], chat_template.fingerprint(template)
    if found != current:
        raise UserError(f"data_dir={data_dir} was prepared by another version of chat_template.py (its "
                        f"{template} fingerprint is {found}, now {current}): prepare it again: "
                        f"`{prepare_command(meta, data_dir)}`")


def _check_size(data_dir: str, meta: dict, name: str, expected_bytes: int) -> None:
    """A file of the folder is there, whole: a missing or cut-off file is a clear line, not a traceback."""
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
        what = "is missing"
    elif os.path.getsize(path) != expected_bytes:
        what = f"has {os.path.getsize(path):,} bytes, not the {expected_bytes:,} meta.json promises"
    else:
        return
    raise UserError(f"data_dir={data_dir}: {name} {what}; prepare the folder again: "
                    f"`{prepare_command(meta, data_dir)}`")


# ----------------------------------------------------------------------------------------------------------
# Reading


def read_tokens(data_dir: str, meta: dict, split: str) -> np.ndarray:
    """One split of prepare_text.py's token stream."""
    name, n = f"{split}.bin", meta[f"n_{split}_tokens"]
    _check_size(data_dir, meta, name, n * np.dtype(TOKEN_DTYPE).itemsize)
    return np.memmap(os.path.join(data_dir, name), dtype=TOKEN_DTYPE, mode="r")


def read_token_file(path: str) -> np.ndarray:
    """A token file named by its path (data/shakespeare/val.bin), checked against the meta.json beside it."""
    data_dir, name = os.path.split(path)
    split = name.removesuffix(".bin")
    if split not in ("train", "val") or not os.path.exists(os.path.join(data_dir or ".", "meta.json")):
        raise UserError(f"{path}: not a token file of a prepared folder (prepare_text.py writes "
                        f"<out_dir>/train.bin and val.bin beside their meta.json)")
    meta = read_meta(data_dir or ".")
    if meta["template"] != "none":
        raise UserError(f"{path}: {data_dir} holds SFT examples, not a text; give a folder prepare_text.py made")
    return read_tokens(data_dir or ".", meta, split)


def read_examples(data_dir: str, meta: dict, split: str, block_size: int, verbose: bool = True) -> dict:
    """One split of prepare_alpaca.py's examples: token ids, loss mask, offsets, lengths, and which examples
    fit the context window (the others are left out, never truncated: that would cut off the end token; said
    if verbose)."""
    n = meta[f"n_{split}"]
    if n == 0:
        raise UserError(f"{data_dir}: the {split} split is empty (prepare it with --val_size above 0)")
    _check_size(data_dir, meta, f"{split}_offsets.bin", (n + 1) * 8)
    offsets = np.fromfile(os.path.join(data_dir, f"{split}_offsets.bin"), dtype=np.int64)
    _check_size(data_dir, meta, f"{split}_ids.bin", int(offsets[-1]) * np.dtype(TOKEN_DTYPE).itemsize)
    _check_size(data_dir, meta, f"{split}_mask.bin", int(offsets[-1]))
    lengths = np.diff(offsets)
    usable = np.flatnonzero(lengths - 1 <= block_size)
    if len(usable) == 0:
        raise UserError(f"data_dir={data_dir}: none of the {n:,} {split} examples fits block_size {block_size}; "
                        f"prepare the data with shorter examples (--max_len), or use a model with a longer context")
    if verbose and len(usable) < len(lengths):
        print(f"{split}: leaving out {len(lengths) - len(usable)} examples longer than block_size {block_size}")
    return {"ids": np.memmap(os.path.join(data_dir, f"{split}_ids.bin"), dtype=TOKEN_DTYPE, mode="r"),
            "mask": np.memmap(os.path.join(data_dir, f"{split}_mask.bin"), dtype=np.uint8, mode="r"),
            "offsets": offsets, "lengths": lengths, "usable": usable}


def read_prompts(data_dir: str, split: str = "val") -> list[str]:
    """The user turn of every example of a prepared SFT split, as its source wrote it."""
    path = os.path.join(data_dir, f"{split}_prompts.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        missing = "meta.json" if not os.path.exists(os.path.join(data_dir, "meta.json")) else f"{split}_prompts.json"
        raise UserError(f"{data_dir}: no prepared {split} split ({missing} is missing); --prompts_from takes a "
                        f"folder prepared by prepare_alpaca.py and a split, e.g. data/alpaca/val") from None


# ----------------------------------------------------------------------------------------------------------
# Batches: which windows or rows a batch takes (the trainers' get_batch), and what it holds


def spread(n: int, i: int, batch_size: int, eval_iters: int) -> np.ndarray:
    """Batch i of a fixed evaluation set: batch_size of the n items (windows or rows), spread evenly with a
    stride that lets eval_iters batches cover the split, wrapping around when they are too few."""
    stride = max(1, n // (eval_iters * batch_size))
    return ((i * batch_size + np.arange(batch_size)) * stride) % n


def epoch_rows(n_rows: int, drawn: int, batch_size: int, micro_batches_per_epoch: int, seed: int,
               runtime: "Runtime") -> np.ndarray:
    """This process's next micro-batch of rows, after it drew `drawn` of them: each epoch takes every row once,
    in an order of its own, a function of (seed, epoch); each micro-batch of each process takes its own slice
    of it, so the processes' batches of a step are disjoint and together the one-process step."""
    epoch, n = divmod(drawn, micro_batches_per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n_rows)
    start = (n * runtime.world_size + runtime.rank) * batch_size  # this process's slice
    return order[start : start + batch_size]


def random_starts(n_starts: int, batch_size: int, seed: int, drawn: int, runtime: "Runtime") -> np.ndarray:
    """Where this process's batch_size random windows start, drawn from a seed that depends only on (seed,
    process, batch number): a resumed run draws the very windows it would have, and each process its own."""
    return np.random.default_rng((seed, runtime.rank, drawn)).integers(0, n_starts, size=batch_size)


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows of length tokens at starts (x) and their targets, the tokens one further on (y), int64."""
    x = np.stack([tokens[s : s + length] for s in starts]).astype(np.int64)
    y = np.stack([tokens[s + 1 : s + 1 + length] for s in starts]).astype(np.int64)
    return x, y


def pack(examples: dict, row_len: int, seed: int) -> dict:
    """Every usable example of examples (read_examples: one split), whole and once, in rows of row_len
    positions. An example of n tokens takes n - 1 positions (each input token with the next one as its
    target).

    Best-fit decreasing: the longest example first, each into the row it fills best (the one with the least
    room left that still holds it), or a new row. Short examples end up in the gaps long ones leave, so
    rows come out nearly full. Examples of the same length are taken in a seeded random order. Returns
    {"example_ids": indices into examples, row after row; "starts": n_rows + 1 offsets into example_ids,
    row r holding example_ids[starts[r]:starts[r + 1]]; "fill": the share of positions that hold an example}.
    """
    sizes = examples["lengths"] - 1
    order = np.random.default_rng(seed).permutation(examples["usable"])
    order = order[np.argsort(-sizes[order], kind="stable")]  # longest first
    rows = []  # the examples of each row
    rows_with_room = [[] for _ in range(row_len + 1)]  # rows_with_room[r]: the rows with exactly r free
    n_with_room = np.zeros(row_len + 1, dtype=np.int64)  # how many rows have exactly r positions free
    for example in order:
        size = sizes[example]
        fitting = np.flatnonzero(n_with_room[size:])  # the rows it fits in, by how much room they have
        if len(fitting):
            room = size + fitting[0]  # the least room that still holds it
            row = rows_with_room[room].pop()
            n_with_room[room] -= 1
        else:
            room, row = row_len, len(rows)
            rows.append([])
        rows[row].append(example)
        rows_with_room[room - size].append(row)
        n_with_room[room - size] += 1
    example_ids = np.array([e for row in rows for e in row], dtype=np.int64)
    starts = np.cumsum([0] + [len(row) for row in rows], dtype=np.int64)
    return {"example_ids": example_ids, "starts": starts,
            "fill": sizes[order].sum() / max(len(rows) * row_len, 1)}


def packed_batch(examples: dict, packed: dict, row_ids: np.ndarray, row_len: int,
                 pad_token: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs x, targets y and positions of the packed rows row_ids (indices into pack()'s rows),
    each (len(row_ids), row_len) int64.

    Each example puts its tokens but the last in x, the tokens after them in y (-100 where the loss
    mask says the token is not a target), and its own positions 0, 1, ... Padding fills the end of a
    row: x the pad token, y -100, and positions that start again at 0, so padding is an example of its
    own that no real token attends to. Built with index arithmetic, without a loop over examples.
    """
    first, last = packed["starts"][row_ids], packed["starts"][row_ids + 1]
    n_examples = last - first  # of each row
    before = np.cumsum(n_examples) - n_examples  # examples of the rows before each row, in this batch
    # Each example of the batch, row after row, and the batch row it sits in
    slot = np.repeat(first - before, n_examples) + np.arange(n_examples.sum())
    batch_examples = packed["example_ids"][slot]
    row_of = np.repeat(np.arange(len(row_ids)), n_examples)
    sizes = examples["lengths"][batch_examples] - 1
    ends = np.cumsum(sizes)
    column = (ends - sizes) - np.repeat((ends - sizes)[before], n_examples)  # where it starts in its row
    # Each token of the batch: its example, its position in that example, where it comes from and goes
    token_of = np.repeat(np.arange(len(batch_examples)), sizes)
    position = np.arange(ends[-1]) - np.repeat(ends - sizes, sizes)
    source = examples["offsets"][batch_examples][token_of] + position
    target = row_of[token_of] * row_len + column[token_of] + position
    filled = np.bincount(row_of, weights=sizes, minlength=len(row_ids)).astype(np.int64)  # per row
    x = np.full(len(row_ids) * row_len, pad_token, dtype=np.int64)
    y = np.full(len(row_ids) * row_len, -100, dtype=np.int64)
    positions = (np.arange(row_len)[None, :] - filled[:, None]).reshape(-1)  # the padding's own
    x[target] = examples["ids"][source]
    next_ids = examples["ids"][source + 1].astype(np.int64)  # (uint16 on disk: -100 would wrap around)
    y[target] = np.where(examples["mask"][source + 1] == 1, next_ids, -100)
    positions[target] = position
    shape = (len(row_ids), row_len)
    return x.reshape(shape), y.reshape(shape), positions.reshape(shape)
