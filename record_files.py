"""
The record files of prepare_alpaca.py's inputs: finding them, reading their records a chunk at a time, and tokenising
them in worker processes. records.py says what a record means; this file only reads.

An input is a file, a folder or a glob of files (shards of one set, read in sorted order), or a hub dataset,
`hf:org/name` (the Parquet files the hub makes of every dataset, through huggingface_hub's own cache). A file:

    JSON list    [{...}, {...}, ...]    parsed a record at a time with json's own decoder (the file need not
                                        fit in memory)
    JSON Lines   one record per line    (.jsonl, or any other file that holds more than one object)
    Parquet      one record per row     (.parquet, read a batch of rows at a time; needs pyarrow)

Reading is split in two so that the costly half runs in worker processes: `chunks` (in the main process)
cuts a file into chunks of raw lines, parsed records or Parquet rows, and `tokenize_chunk` (in a worker)
parses, checks, converts and tokenises one. `tokenized` runs them, in file order, with at most two chunks a
worker in flight: memory is bounded by the chunk size, whatever the size of the file. Record numbers count
from 0 within each file, and an error names the file and the record.
"""

import codecs
import collections
import contextlib
import glob
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

import chat_template
import data
import records
from errors import UserError

SHARD_EXTENSIONS = (".parquet", ".jsonl", ".json")  # the files of a folder given as --input
BLOCK = 1 << 20  # characters of a JSON file read at a time
PER_EXAMPLE = ("tokens", "targets", "prompt_bytes")  # what is kept in memory of each example: its sizes


def parse_input(spec: str) -> tuple[str, float]:
    """--input's value: a path, or path:weight."""
    path, colon, weight = spec.rpartition(":")
    if not colon or not path or os.path.isfile(spec):  # a file whose own name has a colon
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        return spec, 1.0  # a colon that belongs to the file's name
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"--input {spec}: the weight after the colon must be a positive number, like {path}:0.5")
    return path, value


def input_files(path: str) -> list[str]:
    """The files an --input names: a file, a folder's or a glob's files (sorted), or a hub dataset's shards."""
    if path.startswith("hf:"):
        return hub_files(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(SHARD_EXTENSIONS))
        if not files:
            raise UserError(f"--input {path} is a folder with no {', '.join(SHARD_EXTENSIONS)} files in it")
        return files
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise UserError(f"--input {path} matches no file")
        return files
    if not os.path.isfile(path):
        raise UserError(f"input file {path!r} does not exist (or is not a file)")
    return [path]


def hub_files(spec: str) -> list[str]:
    """hf:org/name[/config/split] (config 'default', split 'train' when not named): the Parquet files the hub made
    of that dataset (its refs/convert/parquet revision), from huggingface_hub's own cache, downloaded once."""
    parts = spec.removeprefix("hf:").split("/")
    if len(parts) not in (2, 4) or not all(parts):
        raise UserError(f"--input {spec}: name a hub dataset as hf:org/name, or hf:org/name/config/split")
    repo, (config, split) = "/".join(parts[:2]), parts[2:] or ["default", "train"]
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(f"--input {spec} needs huggingface_hub: pip install huggingface_hub") from None
    pattern = f"{config}/{split}/*.parquet"
    try:
        folder = huggingface_hub.snapshot_download(repo, repo_type="dataset", revision="refs/convert/parquet",
                                                   allow_patterns=pattern)
    except Exception as e:  # offline, no such dataset, gated: huggingface_hub says which
        cache = huggingface_hub.constants.HF_HUB_CACHE
        raise UserError(f"--input {spec}: could not get {repo}'s Parquet files from the hub, and huggingface_hub's "
                        f"cache ({cache}) has no copy of them ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    files = sorted(glob.glob(os.path.join(folder, pattern)))
    if not files:
        found = sorted({os.path.relpath(os.path.dirname(f), folder) for f in glob.glob(f"{folder}/*/*/*.parquet")})
        raise UserError(f"--input {spec}: {repo} has no Parquet files for config {config!r}, split {split!r}; it "
                        f"has {', '.join(found) or 'none'}: name one as hf:{repo}/CONFIG/SPLIT")
    return files


# -----------------------------------------------------------------------------
# reading a file's records, a chunk at a time


def layout(path: str) -> str:
    """How a file holds its records: 'parquet', 'list' (a JSON list) or 'lines' (JSON Lines)."""
    if path.endswith((".parquet", ".jsonl")):
        return "parquet" if path.endswith(".parquet") else "lines"
    blocks = text_blocks(path)
    text, whole = next(blocks, ""), next(blocks, None) is None  # (whole: the file is all in text)
    start = json.decoder.WHITESPACE.match(text).end()
    if text[start:start + 1] == "[":
        return "list"
    # Not a list: JSON Lines, unless the file is one value (an object or a string is not a list of records)
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        if whole:
            raise UserError(f"{path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}).") from None
        return "lines"
    if whole and json.decoder.WHITESPACE.match(text, end).end() == len(text):
        raise UserError(
            f"{path}: the top level is a JSON {records.json_type(value)}, expected a list of records "
            '[{"instruction": ..., "input": ..., "output": ...}, ...] (or a .jsonl file, one record per line)')
    return "lines"


def text_blocks(path: str):
    """The file's text, BLOCK characters or so at a time; a byte that is not UTF-8 is an error naming its offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the block in the file, in bytes
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 text: byte {e.object[e.start]:#04x} at offset "
                                f"{offset - pending + e.start}") from None
            if not block:
                return
            offset += len(block)
            yield text


def json_list_records(path: str):
    """Each record of a JSON list, parsed one at a time with json's own decoder; a syntax error says its line
    and column, as json.loads would."""
    decoder = json.JSONDecoder()
    blocks = text_blocks(path)
    text, pos, at_end = "", 0, False
    line, column = 1, 0  # where text[0] is in the file: its line, and the characters before it on that line

    def read_more():
        nonlocal text, pos, at_end, line, column
        block = next(blocks, None)
        at_end = block is None
        done = text[:pos]  # drop what is parsed, keeping count of its lines for error messages
        line += done.count("\n")
        column = len(done) - done.rfind("\n") - 1 if "\n" in done else column + len(done)
        text, pos = text[pos:] + (block or ""), 0

    def fail(message, at):
        before = text[:at]
        col = at - before.rfind("\n") if "\n" in before else column + at + 1
        hint = (f" If this is a damaged download, delete {path} and run again."
                if os.path.basename(path) == "alpaca_data.json" else "")  # our own download cache
        raise UserError(f"{path} is not valid JSON: {message} (line {line + before.count(chr(10))}, column {col})."
                        f"{hint}")

    def next_char():  # skips whitespace; "" at the end of the file
        nonlocal pos
        while True:
            pos = json.decoder.WHITESPACE.match(text, pos).end()
            if pos < len(text) or at_end:
                return text[pos:pos + 1]
            read_more()

    def next_value():
        """The value at pos, reading more of the file while the end of what is read cuts it off. An error that
        stays where it was when more is read is the file's (an unterminated string: only at the end of the file)."""
        nonlocal pos
        last = None
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
                if end < len(text) or at_end:  # whole: something follows it (a number cut off would parse too)
                    pos = end
                    return value
                error = None
            except json.JSONDecodeError as e:
                error = (e.msg, e.pos - pos)  # (read_more keeps text[pos:], so this stays put)
                if at_end or (error == last and not e.msg.startswith("Unterminated string")):
                    fail(e.msg, e.pos)
            last = error
            read_more()

    next_char()
    pos += 1  # the "[" (layout() saw it)
    if next_char() == "]":
        pos += 1
    else:
        while True:
            next_char()
            yield next_value()
            separator = next_char()
            pos += 1
            if separator == "]":
                break
            if separator != ",":
                fail("Expecting ',' delimiter", pos - 1)
    if next_char():
        fail("Extra data", pos)


def chunks(path: str, chunk_size: int, columns: list[str] | None = None):
    """The file's records in chunks of chunk_size, cut in this process: (kind, first record's index, payload).
    chunk_records turns one into records. columns: a Parquet file's columns to read."""
    kind = layout(path)
    if kind == "lines":  # raw lines: parsing them is the workers' job
        lines, index, first = [], 0, (0, 1, 0)  # first: (record index, line number, byte offset) of lines[0]
        line_number, offset = 1, 0
        with open(path, "rb") as f:
            for line in f:  # (splits at b"\n" only: U+2028 may stand raw inside a JSON string)
                lines.append(line)
                index += bool(line.strip())
                line_number, offset = line_number + 1, offset + len(line)
                if index - first[0] == chunk_size:
                    yield "lines", first, lines
                    lines, first = [], (index, line_number, offset)
        if lines:
            yield "lines", first, lines
    elif kind == "list":
        batch, index = [], 0
        try:
            for record in json_list_records(path):
                batch.append(record)
                if len(batch) == chunk_size:
                    yield "records", index, batch
                    batch, index = [], index + len(batch)
        except UserError:  # the records before a syntax error are checked first, as they come first
            if batch:
                yield "records", index, batch
            raise
        if batch:
            yield "records", index, batch
    else:
        index = 0
        for rows in parquet_file(path).iter_batches(batch_size=chunk_size, columns=columns):
            yield "parquet", index, rows
            index += rows.num_rows


def chunk_records(path: str, chunk):
    """(index, record) for each record of a chunk: parsing its lines, or reading its Parquet rows."""
    kind, first, payload = chunk
    if kind == "records":
        yield from enumerate(payload, start=first)
    elif kind == "parquet":  # every row has every column: a null is a field the record does not have
        for i, row in enumerate(payload.to_pylist(), start=first):
            yield i, {field: without_nulls(value) for field, value in row.items() if value is not None}
    else:
        index, line_number, offset = first
        for line in payload:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 text: byte {line[e.start]:#04x} at offset "
                                f"{offset + e.start}") from None
            if text.strip():
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} is not valid JSON Lines: {e.msg} (line {line_number}, column "
                                    f"{e.colno}); expected one JSON object per line") from None
                yield index, record
                index += 1
            line_number, offset = line_number + 1, offset + len(line)


def without_nulls(value):
    """A Parquet value with its structs' null fields left out (a turn struct with a null 'name' has no name)."""
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def parquet_file(path: str):
    try:
        import pyarrow.parquet
    except ImportError:
        raise UserError(f"{path} is a Parquet file: reading it needs pyarrow (pip install pyarrow)") from None
    try:
        return pyarrow.parquet.ParquetFile(path)
    except Exception as e:  # (pyarrow's ArrowInvalid: not Parquet, or damaged)
        raise UserError(f"{path} is not a readable Parquet file: {e}") from None


def first_fields(path: str) -> tuple[object, bool]:
    """What tells a file's format: its first record (a JSON file), or its columns (Parquet: True)."""
    if layout(path) == "parquet":
        f = parquet_file(path)
        if f.metadata.num_rows == 0:
            raise UserError(f"{path} contains no records")
        return {name: None for name in f.schema_arrow.names}, True
    for chunk in chunks(path, 1):
        for _, record in chunk_records(path, chunk):
            return record, False
    raise UserError(f"{path} contains no records")


# -----------------------------------------------------------------------------
# an input's records -> examples


def open_inputs(specs: list[tuple], fmt: str | None) -> list[dict]:
    """Each --input's files, format (from its first file's first record, unless --format), and fields it reads."""
    sources, seen = [], {}
    for k, (spec, path, weight) in enumerate(specs):
        files = input_files(path)
        for f in files:  # each copy would be split on its own: one copy's val examples in the other's train
            if seen.setdefault(os.path.realpath(f), k) != k or files.count(f) > 1:
                raise UserError(f"--input {spec}: the same file is given twice; give it once, with a weight for "
                                f"more copies (like {path}:2)")
        first, parquet = first_fields(files[0])
        source_fmt = fmt or records.detect_format(first, files[0], parquet)
        known = {*(records.ALPACA_FIELDS if source_fmt == "alpaca" else [records.FORMATS[source_fmt]]), "system"}
        columns = None  # a JSON record's every field; a Parquet file's columns that matter (the others: unread)
        if parquet:
            columns = [c for c in first if c in known or c in records.UNSUPPORTED or c in records.FORMATS.values()]
        sources.append({"input": spec, "path": path, "files": files, "weight": weight, "format": source_fmt,
                        "known": known, "columns": columns, "unread": set(first) - set(columns or first)})
    return sources


def tokenize_chunk(settings: dict, path: str, chunk) -> dict:
    """One chunk of a file's records checked, converted and tokenised (in a worker process). The kept examples
    come back as flat arrays and bytes, cheap to send between processes."""
    ids, mask, sizes, targets, prompts = [], [], [], [], []
    counts = collections.Counter()
    fields = set()
    for i, record in chunk_records(path, chunk):
        messages, skip = records.conversation(record, path, i, settings["format"], settings["forced"],
                                              settings["system_prompt"], settings["skip_bad"], settings["roles"])
        counts["records"] += 1
        fields.update(record)
        if skip is not None:  # (an empty output would teach the model to answer with nothing)
            counts[skip] += 1
            continue
        example_ids, example_mask = chat_template.encode(messages, settings["template"], settings["train_on_prompt"])
        if len(example_ids) > settings["max_len"]:
            counts["dropped_too_long"] += 1
            continue
        ids += example_ids
        mask += example_mask
        sizes.append(len(example_ids))
        targets.append(sum(example_mask))
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        prompts.append(json.dumps(first_user, ensure_ascii=False).encode() + b", ")  # a JSON list's item
    return {"ids": np.array(ids, dtype=data.TOKEN_DTYPE), "mask": np.array(mask, dtype=np.uint8),
            "prompts": b"".join(prompts), "tokens": np.array(sizes, dtype=np.int64),
            "targets": np.array(targets, dtype=np.int64),
            "prompt_bytes": np.array([len(p) for p in prompts], dtype=np.int64), "counts": counts, "fields": fields}


def tokenized(pool, workers: int, path: str, settings: dict, chunks):
    """tokenize_chunk's result for each of a file's chunks, in file order, with at most two chunks a worker in
    flight (the memory bound); pool None: in this process. The first bad record in the file is the one reported,
    whatever the chunk size and the number of workers."""
    if pool is None:
        yield from (tokenize_chunk(settings, path, chunk) for chunk in chunks)
        return
    pending = collections.deque()
    chunks = iter(chunks)
    while True:
        try:
            chunk = next(chunks, None)
        except UserError:  # a syntax error: a bad record before it is the first error in the file
            while pending:
                yield pending.popleft().result()
            raise
        if chunk is None:
            break
        pending.append(pool.submit(tokenize_chunk, settings, path, chunk))
        if len(pending) > 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def tokenize_inputs(sources: list[dict], settings: dict, scratch: str, workers: int, chunk_size: int) -> dict:
    """Every input's records tokenised (workers > 1: in that many processes), each kept example appended to the
    files ids, mask and prompts in the folder scratch. Returns each example's sizes (PER_EXAMPLE), in file
    order; fills in each source's counts, and its "rows": the range of its examples."""
    files = {name: open(os.path.join(scratch, name), "wb") for name in ("ids", "mask", "prompts")}
    sizes, n_rows, n_tokens = {key: [] for key in PER_EXAMPLE}, 0, 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for f in files.values():
            stack.enter_context(f)
        progress = stack.enter_context(tqdm(desc="tokenizing", unit=" rec", disable=not sys.stderr.isatty()))
        spawn = multiprocessing.get_context("spawn")  # (fork is unsafe in a process that has threads)
        pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=spawn)) if workers > 1 else None
        for source in sources:
            counts, fields, first_row = collections.Counter(), set(), n_rows
            for path in source["files"]:
                cut = chunks(path, chunk_size, source["columns"])
                for out in tokenized(pool, workers, path, {**settings, "format": source["format"]}, cut):
                    for name, f in files.items():
                        f.write(out[name])
                    for key in PER_EXAMPLE:
                        sizes[key].append(out[key])
                    counts.update(out["counts"])
                    fields |= out["fields"]
                    n_rows, n_tokens = n_rows + len(out["tokens"]), n_tokens + int(out["tokens"].sum())
                    progress.update(out["counts"]["records"])
                    progress.set_postfix_str(f"{n_tokens / (time.perf_counter() - start):,.0f} tokens/s")
            source.update(rows=(first_row, n_rows), records=counts["records"], kept=n_rows - first_row,
                          skipped={key: counts[key] for key in records.SKIPS},
                          dropped_too_long=counts["dropped_too_long"],
                          ignored_fields=sorted((fields - source["known"]) | source["unread"]))
    return {**{key: np.concatenate(sizes[key]) for key in PER_EXAMPLE}, "seconds": time.perf_counter() - start,
            "n_tokens": n_tokens}


def read_all(path: str, fmt: str) -> list:
    """Every record of a file of the format fmt, checked: for scripts that want a small file's records in memory."""
    found = []
    for chunk in chunks(path, 1000):
        for i, record in chunk_records(path, chunk):
            records.check_record(record, path, i, fmt, forced=False, roles={})
            found.append(record)
    return found
