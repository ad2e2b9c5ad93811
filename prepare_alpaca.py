"""
Prepare instruction data and chats for SFT (Stanford Alpaca by default): records -> token ids + loss masks.

    python prepare_alpaca.py                                  # downloads alpaca_data.json into data/alpaca
    python prepare_alpaca.py --input chats.jsonl --input alpaca_data.json:0.5 --out_dir data/mix
    python prepare_alpaca.py --input 'shards/*.parquet' --out_dir data/big    # or a folder, or hf:org/name

An input (JSON, JSON Lines or Parquet files: record_files.py) holds Alpaca records or chats, in the "messages"
or ShareGPT format (records.py). Each record becomes a conversation; chat_template.encode says which of its
tokens are targets: every assistant turn's content and its end token. A weight after an input's name keeps a
seeded share of its examples (below 1: chosen before the split) or repeats its training examples (above 1:
its validation examples appear once, or the model would be scored on what it trained on). In out_dir:

    {train,val}_ids.bin      np.uint16  every token id of every example, concatenated
    {train,val}_mask.bin     np.uint8   same length; 1 where the token is a training target
    {train,val}_offsets.bin  np.int64   n + 1 entries; example i is ids[offsets[i]:offsets[i+1]]
    {train,val}_prompts.json            each example's first user turn, as written (sample.py --prompts_from)
    meta.json                the command, template, tokenizer, counts, ... (written last; data.py owns the format)

Examples longer than max_len tokens are dropped, never truncated (the model would learn to stop mid-answer, or
never). A bad record stops the run with one `error:` line naming its file and index (exit 2), nothing written.
Memory stays bounded whatever the data's size: pass 1 tokenises the records a chunk at a time in worker
processes and appends each kept example to scratch files in out_dir; the mix and the split need only each
example's size; pass 2 copies the examples from the scratch files in split order.
"""

import contextlib
import functools
import os
import tempfile

import numpy as np

import chat_template
import data
import errors
import record_files
import records
from download import download
from errors import UserError

DEFAULT_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
CHUNK_SIZE = 1000  # records a worker tokenises at a time
GATHER_BLOCK = 4096  # examples written at a time from the scratch files to the output


def split_sizes(val_size: float, n_examples: int) -> tuple[int, int]:
    """(n_train, n_val) from --val_size: a fraction of the examples if < 1, else a count."""
    if val_size < 1:
        n_val = round(val_size * n_examples)
        if val_size > 0 and n_examples > 1:
            n_val = max(n_val, 1)  # asked for a validation split: never silently hand the trainer an empty one
    else:
        n_val = int(val_size)
    if n_val >= n_examples:
        raise UserError(
            f"--val_size {val_size} asks for {n_val} validation examples, but only {n_examples} examples "
            "were kept: nothing would be left to train on. Use a smaller --val_size."
        )
    return n_examples - n_val, n_val


@contextlib.contextmanager
def scratch_space(out_dir: str):
    """A temporary folder in out_dir (the output's disk) for the examples between the two passes. On an error
    it goes, and so do the folders made for it: nothing is left behind."""
    made, path = [], os.path.abspath(out_dir)
    while not os.path.exists(path):
        made.append(path)  # deepest first
        path = os.path.dirname(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".prepare-") as scratch:
            yield scratch
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):  # (only if empty)
                os.rmdir(folder)
        raise


def share(source: dict, kept: np.ndarray, seed: int, k: int) -> np.ndarray:
    """The examples of input k that the mix keeps: all of them, or a seeded share of them in file order."""
    if source["weight"] >= 1:
        return kept
    n = round(source["weight"] * len(kept))
    if n == 0:
        raise UserError(f"--input {source['input']} keeps none of its {len(kept)} examples; give a larger weight")
    return kept[np.sort(np.random.default_rng((seed, 1, k)).choice(len(kept), n, replace=False))]


def split_examples(sources: list[dict], source_of: np.ndarray, val_size: float, seed: int) -> dict:
    """{split: indices of the examples}: one seeded permutation, val its head and train the rest; a weight above
    1 repeats an input's training examples (whole copies, then a seeded share of them once more)."""
    _, n_val = split_sizes(val_size, len(source_of))
    order = np.random.default_rng(seed).permutation(len(source_of))
    split_order = {"train": order[n_val:], "val": order[:n_val]}
    rng = np.random.default_rng((seed, 2))
    repeats = []
    for k, source in enumerate(sources):
        if source["weight"] > 1:
            own = split_order["train"][source_of[split_order["train"]] == k]
            whole, part = divmod(source["weight"], 1)
            repeats += [own] * (int(whole) - 1) + [rng.choice(own, round(part * len(own)), replace=False)]
    if repeats:
        split_order["train"] = rng.permutation(np.concatenate([split_order["train"], *repeats]))
    for k, source in enumerate(sources):
        for split, indices in split_order.items():
            source[split] = int(np.count_nonzero(source_of[indices] == k))
    return split_order


def write_gathered(path: str, scratch_file: str, starts: np.ndarray, sizes: np.ndarray, json_list=False) -> None:
    """Pass 2: write the bytes scratch_file[starts[i]:starts[i] + sizes[i]] for each i, one after another, to
    path. Each piece is read on its own (os.pread): a memory map of the scratch file would grow this process's
    memory with the file. json_list: each piece is a JSON string and ", "; the file is their JSON list."""
    with open(scratch_file, "rb") as source, open(path, "wb") as out:
        out.write(b"[" if json_list else b"")
        for b in range(0, len(starts), GATHER_BLOCK):
            pieces = zip(starts[b:b + GATHER_BLOCK].tolist(), sizes[b:b + GATHER_BLOCK].tolist(), strict=True)
            out.write(b"".join(os.pread(source.fileno(), n, start) for start, n in pieces))
        if json_list:  # what json.dump(the list, ensure_ascii=False) writes, and a newline
            if len(starts):
                out.seek(-2, os.SEEK_END)  # over the last piece's ", "
            out.write(b"]\n")


def output_files(scratch: str, examples: dict, split_order: dict) -> dict:
    """{filename: a numpy array, or a function that writes the file} of each split, for data.write_prepared."""
    tokens, prompt_bytes, byte = examples["tokens"], examples["prompt_bytes"], np.dtype(data.TOKEN_DTYPE).itemsize
    token_starts, prompt_starts = np.cumsum(tokens) - tokens, np.cumsum(prompt_bytes) - prompt_bytes
    ids, mask, prompts = (os.path.join(scratch, name) for name in ("ids", "mask", "prompts"))
    files = {}
    for split, indices in split_order.items():
        rows = examples["rows"][indices]
        files[f"{split}_ids.bin"] = functools.partial(write_gathered, scratch_file=ids,
                                                      starts=token_starts[rows] * byte, sizes=tokens[rows] * byte)
        files[f"{split}_mask.bin"] = functools.partial(write_gathered, scratch_file=mask,
                                                       starts=token_starts[rows], sizes=tokens[rows])
        files[f"{split}_offsets.bin"] = np.concatenate([[0], np.cumsum(tokens[rows])]).astype(np.int64)
        files[f"{split}_prompts.json"] = functools.partial(write_gathered, scratch_file=prompts, json_list=True,
                                                           starts=prompt_starts[rows], sizes=prompt_bytes[rows])
    return files


# -----------------------------------------------------------------------------


def prepare(inputs: list[str] | None = None, url: str = DEFAULT_URL, out_dir: str = "data/alpaca",
            template: str = "chatml", system_prompt: str | None = None, train_on_prompt: bool = False,
            val_size: float = 0.05, max_len: int = 1024, seed: int = 1337, fmt: str | None = None,
            skip_bad: bool = False, roles: str | None = None, workers: int = 0, chunk_size: int = CHUNK_SIZE) -> dict:
    """Read, check, tokenise, mix, split and write a dataset from inputs (each a path or path:weight; the
    download from url when None). workers: processes that tokenise (0: one a core for inputs over 16 MB, else
    1: none started). Returns the meta dict that is saved as meta.json."""
    # Check the arguments before any work: a typo should not cost a download.
    if template not in chat_template.TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(chat_template.TEMPLATES)}")
    if fmt is not None and fmt not in records.FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(records.FORMATS)}")
    if val_size < 0 or (val_size >= 1 and not float(val_size).is_integer()):
        raise UserError(f"--val_size {val_size}: give a fraction below 1 (like 0.05) or a whole count (like 500)")
    if max_len < 1:
        raise UserError(f"--max_len {max_len} must be a positive number of tokens (GPT-2's context is 1024)")
    if workers < 0 or chunk_size < 1:
        raise UserError(f"--workers {workers}, --chunk_size {chunk_size}: give workers >= 0 and a chunk_size >= 1")
    settings = {"forced": fmt is not None, "system_prompt": system_prompt or None,  # "" means none
                "skip_bad": skip_bad, "roles": records.parse_roles(roles), "template": template,
                "train_on_prompt": train_on_prompt, "max_len": max_len}
    specs = [(spec, *record_files.parse_input(spec)) for spec in inputs or []]
    if not specs:  # (offline, or no such file: a DownloadError, one line)
        specs = [(url, download(url, os.path.join(out_dir, "alpaca_data.json")), 1.0)]
    sources = record_files.open_inputs(specs, fmt)  # every file found, each format told: before the tokenizer
    enc = chat_template.get_tokenizer()  # offline without tiktoken's files: a UserError
    assert enc.n_vocab <= np.iinfo(np.uint16).max + 1, "token ids must fit in uint16"
    size = sum(os.path.getsize(f) for source in sources for f in source["files"])
    workers = workers or ((os.cpu_count() or 1) if size > 16 << 20 else 1)  # (small: not worth starting any)

    with scratch_space(out_dir) as scratch:
        examples = record_files.tokenize_inputs(sources, settings, scratch, workers, chunk_size)
        rows = [share(s, np.arange(*s["rows"]), seed, k) for k, s in enumerate(sources)]  # the mix
        examples.update(rows=np.concatenate(rows), source=np.concatenate([np.full(len(r), k) for k, r in
                                                                          enumerate(rows)]))
        meta = make_meta(sources, settings, [spec for spec, _, _ in specs] if inputs else None, url, enc,
                         [*(["--format", fmt] if fmt else []), *(["--roles", roles] if roles else [])], val_size, seed)
        if not len(examples["rows"]):
            skipped = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in meta["skipped"].items())
            raise UserError(f"{', '.join(s['path'] for s in sources)}: no examples left: skipped {skipped}; "
                            f"{meta['dropped_too_long']} longer than --max_len {max_len}")
        split_order = split_examples(sources, examples["source"], val_size, seed)
        meta.update(n_train=len(split_order["train"]), n_val=len(split_order["val"]), sources=[
            {key: s[key] for key in ("input", "format", "weight", "records", "skipped", "dropped_too_long", "kept",
                                     "train", "val", "ignored_fields")}
            | ({"files": s["files"]} if s["files"] != [s["path"]] else {}) for s in sources])  # (a folder, a glob)
        data.write_prepared(out_dir, output_files(scratch, examples, split_order), meta)
    summary(sources, examples, meta, out_dir, workers)
    return meta


def make_meta(sources, settings, given, url, enc, format_flags, val_size, seed) -> dict:
    """meta.json but the split's counts; its command makes the folder again (data.py names it when needed)."""
    val = str(int(val_size)) if val_size >= 1 else repr(val_size)  # exactly (a count of 1234567 is not 1.2e6)
    system_prompt, template, max_len = settings["system_prompt"], settings["template"], settings["max_len"]
    command = ["python", "prepare_alpaca.py",
               *([a for spec in given for a in ("--input", spec)] if given else ["--url", url]),
               *format_flags, *(["--skip_bad"] if settings["skip_bad"] else []),
               "--template", template, *(["--system_prompt", system_prompt] if system_prompt else []),
               *(["--train_on_prompt"] if settings["train_on_prompt"] else []), "--val_size", val,
               "--max_len", str(max_len), "--seed", str(seed)]
    return {"command": command, "template": template,
            "template_fingerprint": chat_template.fingerprint(template),  # checked by the trainer
            "system_prompt": system_prompt, "train_on_prompt": settings["train_on_prompt"], "tokenizer": enc.name,
            "vocab_size": enc.n_vocab, "end_token": chat_template.end_token(template), "max_len": max_len,
            "source": ", ".join(given or [url]), "seed": seed, "n_train": None, "n_val": None,
            "records": sum(s["records"] for s in sources),
            "skipped": {key: sum(s["skipped"][key] for s in sources) for key in records.SKIPS},
            "dropped_too_long": sum(s["dropped_too_long"] for s in sources), "sources": None}


def summary(sources: list[dict], examples: dict, meta: dict, out_dir: str, workers: int) -> None:
    lengths = examples["tokens"][examples["rows"]]  # the examples the mix keeps, once each
    n_targets, seconds = examples["targets"][examples["rows"]].sum(), examples["seconds"]
    for s in sources:
        weighted = len(sources) > 1 or s["weight"] != 1
        files = f" ({len(s['files'])} files)" if len(s["files"]) > 1 else ""
        print(f"read:              {s['records']:,} {s['format']} records from {s['path']}{files}"
              + (f" (weight {s['weight']:g}): {s['train']:,} train, {s['val']:,} val" if weighted else ""))
        if s["ignored_fields"]:
            print(f"ignored fields:    {', '.join(s['ignored_fields'])} (not part of the {s['format']} format)")
    skipped, (p50, p90, p99) = meta["skipped"], np.percentile(lengths, [50, 90, 99])
    print(f"kept:              {len(lengths):,}")
    print(f"skipped:           {skipped['empty_instruction']:,} empty instruction, "
          f"{skipped['empty_output']:,} empty output, {skipped['bad_conversation']:,} bad conversation")
    print(f"dropped too long:  {meta['dropped_too_long']:,} (over max_len={meta['max_len']} tokens)")
    print(f"tokens/example:    mean {lengths.mean():.1f}, p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, "
          f"max {lengths.max()}")
    print(f"target tokens:     {n_targets:,} of {lengths.sum():,} ({100 * n_targets / lengths.sum():.1f}%)")
    print(f"split:             {meta['n_train']:,} train, {meta['n_val']:,} val (seed {meta['seed']})")
    print(f"throughput:        {meta['records'] / seconds:,.0f} records/s, {examples['n_tokens'] / seconds:,.0f} "
          f"tokens/s ({workers} worker process{'es' if workers > 1 else ''}, {seconds:.1f} s)")
    print(f"wrote:             {os.path.join(out_dir, '{train,val}_{ids,mask,offsets}.bin')}, "
          f"{{train,val}}_prompts.json and meta.json")


def main(argv=None) -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--input", action="append",
                        help="a .json (a list), .jsonl or .parquet file, a folder or glob of them, or hf:org/name, "
                             "optionally with :weight; may be repeated")
    parser.add_argument("--format", choices=list(records.FORMATS),
                        help="every input file's format (default: each file's, from its first record)")
    parser.add_argument("--roles", help="more names of a turn's role, as name=role pairs: bot=assistant,prompter=user")
    parser.add_argument("--skip_bad", action="store_true",
                        help="drop (and count) conversations that do not alternate user/assistant, end with the "
                             "user or have an empty turn, instead of stopping")
    parser.add_argument("--url", default=DEFAULT_URL, help="where to download the JSON when --input is not given")
    parser.add_argument("--out_dir", default="data/alpaca")
    parser.add_argument("--template", default="chatml", choices=chat_template.TEMPLATES)
    parser.add_argument("--system_prompt", default=None,
                        help="a system message for every conversation that has none of its own")
    parser.add_argument("--train_on_prompt", action="store_true", help="make every token a target, not just answers")
    parser.add_argument("--val_size", type=float, default=0.05, help="a fraction if < 1, else a number of examples")
    parser.add_argument("--max_len", type=int, default=1024, help="drop examples longer than this many tokens")
    parser.add_argument("--seed", type=int, default=1337, help="seeds the train/val split and the mix")
    parser.add_argument("--workers", type=int, default=0, help="processes that tokenise (0: one a core, if over 16 MB)")
    parser.add_argument("--chunk_size", type=int, default=CHUNK_SIZE, help="records a worker takes at a time")
    args = parser.parse_args(argv)
    prepare(inputs=args.input, url=args.url, out_dir=args.out_dir, template=args.template,
            system_prompt=args.system_prompt, train_on_prompt=args.train_on_prompt, val_size=args.val_size,
            max_len=args.max_len, seed=args.seed, fmt=args.format, skip_bad=args.skip_bad, roles=args.roles,
            workers=args.workers, chunk_size=args.chunk_size)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
