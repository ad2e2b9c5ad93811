"""
Prepare an instruction dataset (Stanford Alpaca by default) for SFT: JSON records -> token ids + loss masks.

    python prepare_alpaca.py                                  # downloads alpaca_data.json into data/alpaca
    python prepare_alpaca.py --input my_data.jsonl --out_dir data/mine --template alpaca

Each record {"instruction", "input" (optional), "output"} becomes a conversation
(optional system message, user = instruction [+ "\\n\\n" + input], assistant = output) and is encoded with
chat_template.encode, which also says which tokens are training targets. Output, in out_dir:

    train_ids.bin      np.uint16  every token id of every train example, concatenated
    train_mask.bin     np.uint8   same length; 1 where the token is a training target
    train_offsets.bin  np.int64   n_train + 1 entries; example i is ids[offsets[i]:offsets[i+1]]
    train_prompts.json            each example's user turn, as written (sample.py --prompts_from)
    val_*                         the same for the validation split
    meta.json          the command, template, tokenizer, vocab_size, end_token, counts, ... (written last)

data.py owns this format; the trainer reads it with np.memmap and needs neither the tokenizer nor JSON.
Examples longer than max_len tokens are dropped, never truncated: a truncated example would teach the model
to stop mid-answer, or to never stop. A malformed file stops the run with one `error:` line (exit code 2)
and leaves no output files behind.
Record numbers in messages count from 0, like a Python list index (jq's .[3]).
"""

import json
import os

import numpy as np
from tqdm import tqdm

import chat_template
import data
import errors
from download import download
from errors import UserError

DEFAULT_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
FIELDS = ("instruction", "input", "output")  # "input" may be absent; the other two must be there


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for error messages about the file (not about Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


# -----------------------------------------------------------------------------
# reading and checking the records


def read_records(path: str) -> list:
    """The records of a JSON list or a JSON Lines file (one object per line), parsed but not yet checked."""
    if not os.path.isfile(path):
        raise UserError(f"input file {path!r} does not exist (or is not a file)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start}") from None

    if not path.endswith(".jsonl"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            # "Extra data" after a first complete object is what a JSON Lines file looks like to json.loads:
            # read it line by line instead. Anything else is a genuine syntax error.
            if not (e.msg == "Extra data" and text.lstrip().startswith("{")):
                hint = ""
                if os.path.basename(path) == "alpaca_data.json":  # our own download cache
                    hint = f" If this is a damaged download, delete {path} and run again."
                raise UserError(
                    f"{path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}).{hint}"
                ) from None

    # JSON Lines. Split on "\n" only: str.splitlines would also split on U+2028 and friends, which JSON
    # allows raw inside strings.
    records = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not valid JSON Lines: {e.msg} (line {line_number}, column {e.colno}); "
                "expected one JSON object per line"
            ) from None
    return records


def check_records(records, source: str) -> None:
    """Stop at the first structural problem: the file must be a list of objects with string fields."""
    if not isinstance(records, list):
        raise UserError(
            f"{source}: the top level is a JSON {json_type(records)}, expected a list of records "
            '[{"instruction": ..., "input": ..., "output": ...}, ...] (or a .jsonl file, one record per line)'
        )
    if not records:
        raise UserError(f"{source} contains no records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(
                f"{source}: record {i} is a JSON {json_type(record)}, expected an object with "
                f"'instruction' and 'output' strings: {record!r:.80}"
            )
        for field in ("instruction", "output"):
            if field not in record:
                raise UserError(f"{source}: record {i} has no {field!r} field (its fields: {sorted(record)})")
        for field in FIELDS:
            if field in record and not isinstance(record[field], str):
                raise UserError(
                    f"{source}: record {i}: {field!r} is a JSON {json_type(record[field])} "
                    f"({record[field]!r:.40}), expected a string"
                )


def to_messages(record: dict, system_prompt: str | None) -> list[dict]:
    """Alpaca's convention: the optional input follows the instruction after a blank line."""
    user = record["instruction"]
    extra = record.get("input", "")
    if extra.strip():  # test emptiness on the stripped text, but keep the author's text exactly as written
        user = user + "\n\n" + extra
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return messages


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


# -----------------------------------------------------------------------------


def prepare(
    input_path: str | None = None,
    url: str = DEFAULT_URL,
    out_dir: str = "data/alpaca",
    template: str = "chatml",
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
    val_size: float = 0.05,
    max_len: int = 1024,
    seed: int = 1337,
) -> dict:
    """Read, check, tokenise, split and write one dataset. Returns the meta dict that is saved as meta.json."""
    # Check the arguments before any work: a typo should not cost a download.
    if template not in chat_template.TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(chat_template.TEMPLATES)}")
    if val_size < 0 or (val_size >= 1 and not float(val_size).is_integer()):
        raise UserError(f"--val_size {val_size}: give a fraction below 1 (like 0.05) or a whole count (like 500)")
    if max_len < 1:
        raise UserError(f"--max_len {max_len} must be a positive number of tokens (GPT-2's context is 1024)")
    system_prompt = system_prompt or None  # an empty --system_prompt "" means none

    # 1. Read and check everything before the tokenizer is even loaded.
    if input_path is not None:
        source, path = input_path, input_path
    else:
        try:
            source, path = url, download(url, os.path.join(out_dir, "alpaca_data.json"))
        except (RuntimeError, FileNotFoundError) as e:  # offline, or no such file
            raise UserError(str(e)) from None
    records = read_records(path)
    check_records(records, path)

    # 2. Tokenise, one record at a time (a plain loop is the fast way on few cores; see BENCHMARKS.md).
    enc = chat_template.get_tokenizer()  # offline without tiktoken's files: a UserError
    assert enc.n_vocab <= np.iinfo(np.uint16).max + 1, "token ids must fit in uint16"
    examples = []  # (ids, mask, user turn) of every kept record, in file order
    skipped = {"empty_instruction": 0, "empty_output": 0}
    dropped_too_long = 0
    for record in tqdm(records, desc="tokenizing", unit="rec", leave=False):
        if not record["instruction"].strip():
            skipped["empty_instruction"] += 1
            continue
        if not record["output"].strip():
            skipped["empty_output"] += 1  # nothing to learn, and it would teach the model to answer with nothing
            continue
        messages = to_messages(record, system_prompt)
        ids, mask = chat_template.encode(messages, template, train_on_prompt)
        if len(ids) > max_len:
            dropped_too_long += 1
            continue
        examples.append((ids, mask, messages[-2]["content"]))
    if not examples:
        raise UserError(f"{source}: no examples left after skipping empty records and dropping long ones")

    # 3. Split: one seeded permutation; val is its head, train the rest, each kept in permutation order.
    n_train, n_val = split_sizes(val_size, len(examples))
    order = np.random.default_rng(seed).permutation(len(examples))
    split_order = {"train": order[n_val:], "val": order[:n_val]}

    # 4. Build each split's arrays once, from flat Python lists (fast; per-record numpy arrays are not).
    splits, prompts = {}, {}
    for split, indices in split_order.items():
        ids, mask, sizes = [], [], [0]
        for i in indices:
            ids += examples[i][0]
            mask += examples[i][1]
            sizes.append(len(examples[i][0]))
        splits[split] = {
            "ids": np.array(ids, dtype=data.TOKEN_DTYPE),
            "mask": np.array(mask, dtype=np.uint8),
            "offsets": np.cumsum(sizes, dtype=np.int64),  # starts at 0 because sizes does
        }
        prompts[f"{split}_prompts.json"] = [examples[i][2] for i in indices]

    # The command that makes this folder again (data.py names it when the folder must be prepared anew)
    command = ["python", "prepare_alpaca.py", "--input" if input_path is not None else "--url", source,
               "--template", template, *(["--system_prompt", system_prompt] if system_prompt else []),
               *(["--train_on_prompt"] if train_on_prompt else []), "--val_size", f"{val_size:g}",
               "--max_len", str(max_len), "--seed", str(seed)]
    meta = {
        "command": command,
        "template": template,
        "template_fingerprint": chat_template.fingerprint(template),  # checked by the trainer
        "system_prompt": system_prompt,
        "train_on_prompt": train_on_prompt,
        "tokenizer": enc.name,
        "vocab_size": enc.n_vocab,
        "end_token": chat_template.end_token(template),
        "max_len": max_len,
        "source": source,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "records": len(records),
        "skipped": skipped,
        "dropped_too_long": dropped_too_long,
    }
    arrays = {f"{split}_{name}.bin": array for split, named in splits.items() for name, array in named.items()}
    data.write_prepared(out_dir, arrays, meta, prompts)

    # 5. Summary.
    lengths = np.array([len(ids) for ids, _, _ in examples])
    n_targets = sum(sum(mask) for _, mask, _ in examples)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    print(f"records read:      {len(records):,} from {source}")
    print(f"kept:              {len(examples):,}")
    print(f"skipped:           {skipped['empty_instruction']:,} empty instruction, "
          f"{skipped['empty_output']:,} empty output")
    print(f"dropped too long:  {dropped_too_long:,} (over max_len={max_len} tokens)")
    print(f"tokens/example:    mean {lengths.mean():.1f}, p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, "
          f"max {lengths.max()}")
    print(f"target tokens:     {n_targets:,} of {lengths.sum():,} ({100 * n_targets / lengths.sum():.1f}%)")
    print(f"split:             {n_train:,} train, {n_val:,} val (seed {seed})")
    print(f"wrote:             {os.path.join(out_dir, '{train,val}_{ids,mask,offsets}.bin')}, "
          f"{{train,val}}_prompts.json and meta.json")
    return meta


def main(argv=None) -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--input", help="local .json (a list) or .jsonl file with instruction/input/output")
    parser.add_argument("--url", default=DEFAULT_URL, help="where to download the JSON when --input is not given")
    parser.add_argument("--out_dir", default="data/alpaca")
    parser.add_argument("--template", default="chatml", choices=chat_template.TEMPLATES)
    parser.add_argument("--system_prompt", default=None, help="prepended to every conversation as a system message")
    parser.add_argument("--train_on_prompt", action="store_true", help="make every token a target, not just answers")
    parser.add_argument("--val_size", type=float, default=0.05, help="a fraction if < 1, else a number of examples")
    parser.add_argument("--max_len", type=int, default=1024, help="drop examples longer than this many tokens")
    parser.add_argument("--seed", type=int, default=1337, help="seeds the train/val split")
    args = parser.parse_args(argv)
    prepare(input_path=args.input, url=args.url, out_dir=args.out_dir, template=args.template,
            system_prompt=args.system_prompt, train_on_prompt=args.train_on_prompt, val_size=args.val_size,
            max_len=args.max_len, seed=args.seed)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
