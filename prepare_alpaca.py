"""
Prepare instruction data for SFT (Stanford Alpaca by default): JSON records -> token ids + loss masks.

    python prepare_alpaca.py                                  # downloads alpaca_data.json into data/alpaca
    python prepare_alpaca.py --input my_data.jsonl --out_dir data/mine --template alpaca
    python prepare_alpaca.py --input chats.jsonl --input alpaca_data.json:0.5 --out_dir data/mix

A file (a JSON list, or JSON Lines: one record per line) holds records of one of three formats, told apart
by the first record's fields (--format names it instead):

    alpaca    {"instruction": ..., "input": ... (optional), "output": ...}
    messages  {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}
    sharegpt  {"conversations": [{"from": "system" | "human" | "gpt", "value": ...}, ...]}

Every record becomes a conversation: an optional system message, then user and assistant turns in turn,
ending with the assistant's. An Alpaca record is one exchange (user = instruction [+ "\\n\\n" + input]).
A record's own system message wins over --system_prompt. chat_template.encode renders the conversation
and says which tokens are training targets: every assistant turn's content and its end token, nothing
else. Other fields of a record (an id, a category) are ignored and named in the summary; fields that
change what a conversation means (tool calls, images, a turn's "name") are an error, never a silent drop.

--input may be given several times, each file with an optional weight after a colon (b.json:0.5). A
weight below 1 keeps that share of the file's examples (a seeded choice, made before the split); above 1,
the file's training examples are repeated (its validation examples appear once: a copy in both splits
would let the model be scored on what it trained on). Output, in out_dir:

    train_ids.bin      np.uint16  every token id of every train example, concatenated
    train_mask.bin     np.uint8   same length; 1 where the token is a training target
    train_offsets.bin  np.int64   n_train + 1 entries; example i is ids[offsets[i]:offsets[i+1]]
    train_prompts.json            each example's first user turn, as written (sample.py --prompts_from)
    val_*                         the same for the validation split
    meta.json          the command, template, tokenizer, vocab_size, end_token, counts, ... (written last)

data.py owns this format; the trainer reads it with np.memmap and needs neither the tokenizer nor JSON.
Examples longer than max_len tokens are dropped, never truncated: a truncated example would teach the model
to stop mid-answer, or to never stop. A malformed file stops the run with one `error:` line (exit code 2)
and leaves no output files behind. Record and turn numbers count from 0, like a Python list index (jq's .[3]).
"""

import json
import math
import os
import sys

import numpy as np
from tqdm import tqdm

import chat_template
import data
import errors
from download import download
from errors import UserError

DEFAULT_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
ALPACA_FIELDS = ("instruction", "input", "output")  # "input" may be absent
FORMATS = {"alpaca": "instruction", "messages": "messages", "sharegpt": "conversations"}  # the field that names it
TURN_FIELDS = {"messages": ("role", "content"), "sharegpt": ("from", "value")}  # a turn's two fields
ROLE_NAMES = {"messages": {role: role for role in chat_template.ROLES},  # the format's role -> ours
              "sharegpt": {"system": "system", "human": "user", "gpt": "assistant"}}
# Fields that change what a conversation means: tools the assistant calls, images it looks at. Dropping them
# would train on half a conversation, so they stop the run instead.
UNSUPPORTED = ("tools", "functions", "tool_calls", "images", "image", "audios", "videos",
               "history")  # (earlier turns beside an Alpaca record, LLaMA-Factory's: use the messages format)


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


def detect_format(records, source: str) -> str:
    """The format of a file, from its first record's fields."""
    check_list(records, source)
    first = records[0]
    if not isinstance(first, dict):
        raise UserError(f"{source}: record 0 is a JSON {json_type(first)}, expected an object: {first!r:.80}")
    found = [fmt for fmt, field in FORMATS.items() if field in first]
    if len(found) != 1:
        named = ", ".join(f"{field!r} ({fmt})" for fmt, field in FORMATS.items())
        has = f"has {' and '.join(map(repr, (FORMATS[f] for f in found)))}" if found else "has none of " + named
        raise UserError(f"{source}: record 0 {has}, so its format is unclear (its fields: {sorted(first)}); "
                        "name it with --format alpaca|messages|sharegpt")
    return found[0]


def check_list(records, source: str) -> None:
    if not isinstance(records, list):
        raise UserError(
            f"{source}: the top level is a JSON {json_type(records)}, expected a list of records "
            '[{"instruction": ..., "input": ..., "output": ...}, ...] (or a .jsonl file, one record per line)'
        )
    if not records:
        raise UserError(f"{source} contains no records")


def check_records(records, source: str, fmt: str, forced: bool = False) -> None:
    """Stop at the first record that is not of the file's format (forced: named by --format): a list of objects
    with string fields."""
    check_list(records, source)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise UserError(f"{source}: record {i} is a JSON {json_type(record)}, expected an object: {record!r:.80}")
        other = [f for f, field in FORMATS.items() if f != fmt and field in record]
        if FORMATS[fmt] not in record and other and forced:
            raise UserError(f"{source}: --format {fmt} was given, but record {i} is in the {other[0]} format "
                            f"({FORMATS[other[0]]!r}); --format applies to every --input: leave it out to tell "
                            "each file's format from its first record")
        if FORMATS[fmt] not in record and other:
            raise UserError(f"{source}: record {i} is in the {other[0]} format ({FORMATS[other[0]]!r}), but this "
                            f"file is {fmt}; a file holds one format: put each format in its own file, each given "
                            "with --input")
        unsupported = [field for field in UNSUPPORTED if field in record]
        if unsupported:
            raise UserError(f"{source}: record {i} has {unsupported[0]!r}: tools, images and earlier turns kept "
                            "beside a record are not read here; remove those records, or write a conversation "
                            "as a messages record")
        if not isinstance(record.get("system", ""), str):
            raise UserError(f"{source}: record {i}: 'system' is a JSON {json_type(record['system'])}, expected a "
                            "string")
        if fmt == "alpaca":
            check_alpaca(record, f"{source}: record {i}")
        else:
            check_turns(record, f"{source}: record {i}", fmt)


def check_alpaca(record: dict, where: str) -> None:
    for field in ("instruction", "output"):
        if field not in record:
            raise UserError(f"{where} has no {field!r} field (its fields: {sorted(record)})")
    for field in ALPACA_FIELDS:
        if field in record and not isinstance(record[field], str):
            raise UserError(f"{where}: {field!r} is a JSON {json_type(record[field])} "
                            f"({record[field]!r:.40}), expected a string")


def check_turns(record: dict, where: str, fmt: str) -> None:
    """A messages or ShareGPT record: a list of turns, each with exactly the format's two string fields."""
    field, (role_field, text_field) = FORMATS[fmt], TURN_FIELDS[fmt]
    turns = record.get(field)
    if not isinstance(turns, list):
        raise UserError(f"{where}: {field!r} is a JSON {json_type(turns)}, expected a list of "
                        f'{{"{role_field}": ..., "{text_field}": ...}} turns')
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}, turn {j} is a JSON {json_type(turn)}, expected an object: {turn!r:.80}")
        extra = sorted(set(turn) - {role_field, text_field})
        if extra:
            raise UserError(f"{where}, turn {j} has {', '.join(map(repr, extra))} besides {role_field!r} and "
                            f"{text_field!r}: tool calls, names and images are not part of the {fmt} format "
                            "read here; remove those fields, or those records")
        if turn.get(role_field) not in ROLE_NAMES[fmt]:
            raise UserError(f"{where}, turn {j}: {role_field!r} is {turn.get(role_field)!r}, not one of "
                            f"{', '.join(map(repr, ROLE_NAMES[fmt]))}; rename it to one of those, or remove "
                            "the record")
        if not isinstance(turn.get(text_field), str):
            raise UserError(f"{where}, turn {j}: {text_field!r} is a JSON {json_type(turn.get(text_field))}, "
                            "expected a string")


def to_messages(record: dict, system_prompt: str | None) -> list[dict]:
    """An Alpaca record as messages. Alpaca's convention: the optional input follows the instruction after a
    blank line. The record's own "system" field (LLaMA-Factory's) wins over system_prompt."""
    user = record["instruction"]
    extra = record.get("input", "")
    if extra.strip():  # test emptiness on the stripped text, but keep the author's text exactly as written
        user = user + "\n\n" + extra
    system = record["system"] if record.get("system", "").strip() else system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return messages


def turns_to_messages(record: dict, fmt: str) -> list[dict]:
    """A messages or ShareGPT record's turns as chat_template's messages, contents exactly as written."""
    role_field, text_field = TURN_FIELDS[fmt]
    return [{"role": ROLE_NAMES[fmt][t[role_field]], "content": t[text_field]} for t in record[FORMATS[fmt]]]


def conversation_problem(messages: list[dict]) -> str | None:
    """Why a conversation cannot be trained on as written, or None: after an optional system message, user
    and assistant alternate, starting with the user and ending with the assistant (its last turn is a
    target), and no turn is empty."""
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    if len(messages) == offset:
        return "it has no user or assistant turn"
    for j, m in enumerate(messages[offset:], start=offset):  # (an empty system message means none)
        if not m["content"].strip():
            return f"turn {j} ({m['role']}) is empty"
    for j, m in enumerate(messages[offset:], start=offset):
        expected = ("user", "assistant")[(j - offset) % 2]
        if m["role"] != expected:
            return (f"turn {j} is the {m['role']}'s where the {expected}'s should be (after an optional first "
                    "system message, turns alternate user, assistant)")
    if messages[-1]["role"] != "assistant":
        return "it ends with the user's turn; the last turn must be the assistant's"
    return None


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
# one input file -> examples


def read_input(spec: str, path: str, weight: float, fmt: str | None, system_prompt: str | None,
               skip_bad: bool) -> dict:
    """Read and check one file (nothing tokenised yet): its records, format and conversations."""
    records = read_records(path)
    forced = fmt is not None
    fmt = fmt or detect_format(records, path)
    check_records(records, path, fmt, forced)
    known = {*(ALPACA_FIELDS if fmt == "alpaca" else [FORMATS[fmt]]), "system"}
    ignored = sorted({field for record in records for field in record} - known)
    conversations = []  # (messages, None or why it is skipped: a key of encode_input's counts)
    for i, record in enumerate(records):
        if fmt == "alpaca":  # Alpaca's empty fields are common: skipped and counted, not an error
            empty = [field for field in ("instruction", "output") if not record[field].strip()]
            conversations.append((to_messages(record, system_prompt), f"empty_{empty[0]}" if empty else None))
            continue
        messages = turns_to_messages(record, fmt)
        problem = conversation_problem(messages)  # on the record's own turns: turn numbers are the file's
        if problem is not None and not skip_bad:
            raise UserError(f"{path}: record {i}: {problem}; fix the record, or pass --skip_bad to drop (and "
                            "count) such records")
        # The system message: the record's own (a first system turn or a "system" field, not both), else
        # --system_prompt. An empty one is none.
        has_system_turn = bool(messages) and messages[0]["role"] == "system"
        own, field = messages[0]["content"] if has_system_turn else "", record.get("system", "")
        if own.strip() and field.strip():
            raise UserError(f"{path}: record {i} has a 'system' field and a system turn; keep one of them")
        system = own if own.strip() else field if field.strip() else system_prompt
        turns = messages[1:] if has_system_turn else messages
        messages = ([{"role": "system", "content": system}] if system else []) + turns
        conversations.append((messages, None if problem is None else "bad_conversation"))
    return {"input": spec, "path": path, "weight": weight, "format": fmt, "records": len(records),
            "ignored_fields": ignored, "conversations": conversations}


def encode_input(source: dict, template: str, train_on_prompt: bool, max_len: int) -> list:
    """The examples (ids, mask, first user turn) of one file's conversations; counts what it skips."""
    skipped = {"empty_instruction": 0, "empty_output": 0, "bad_conversation": 0}
    dropped_too_long = 0
    examples = []
    for messages, skip in tqdm(source["conversations"], desc=f"tokenizing {source['path']}", unit="rec",
                               leave=False, disable=not sys.stderr.isatty()):  # a log gets the error alone
        if skip is not None:  # (an empty output would teach the model to answer with nothing)
            skipped[skip] += 1
            continue
        ids, mask = chat_template.encode(messages, template, train_on_prompt)
        if len(ids) > max_len:
            dropped_too_long += 1
            continue
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        examples.append((ids, mask, first_user))
    source.update(skipped=skipped, dropped_too_long=dropped_too_long, kept=len(examples))
    return examples


# -----------------------------------------------------------------------------


def prepare(
    inputs: list[str] | None = None,
    url: str = DEFAULT_URL,
    out_dir: str = "data/alpaca",
    template: str = "chatml",
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
    val_size: float = 0.05,
    max_len: int = 1024,
    seed: int = 1337,
    fmt: str | None = None,
    skip_bad: bool = False,
) -> dict:
    """Read, check, tokenise, mix, split and write a dataset from inputs (each a path or path:weight; the
    download from url when None). Returns the meta dict that is saved as meta.json."""
    # Check the arguments before any work: a typo should not cost a download.
    if template not in chat_template.TEMPLATES:
        raise UserError(f"unknown template {template!r}; choose one of {', '.join(chat_template.TEMPLATES)}")
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if val_size < 0 or (val_size >= 1 and not float(val_size).is_integer()):
        raise UserError(f"--val_size {val_size}: give a fraction below 1 (like 0.05) or a whole count (like 500)")
    if max_len < 1:
        raise UserError(f"--max_len {max_len} must be a positive number of tokens (GPT-2's context is 1024)")
    system_prompt = system_prompt or None  # an empty --system_prompt "" means none
    specs = [(spec, *parse_input(spec)) for spec in inputs or []]
    paths = [os.path.realpath(path) for _, path, _ in specs]
    twice = next((spec for (spec, _, _), p in zip(specs, paths, strict=True) if paths.count(p) > 1), None)
    if twice is not None:  # each copy would be split on its own: one copy's val examples in the other's train
        raise UserError(f"--input {twice}: the same file is given twice; give it once, with a weight for more "
                        f"copies (like {parse_input(twice)[0]}:2)")

    # 1. Read and check every file before the tokenizer is even loaded.
    if not specs:
        try:
            specs = [(url, download(url, os.path.join(out_dir, "alpaca_data.json")), 1.0)]
        except (RuntimeError, FileNotFoundError) as e:  # offline, or no such file
            raise UserError(str(e)) from None
    sources = [read_input(spec, path, weight, fmt, system_prompt, skip_bad) for spec, path, weight in specs]

    # 2. Tokenise, one record at a time (a plain loop is the fast way on few cores; see BENCHMARKS.md).
    enc = chat_template.get_tokenizer()  # offline without tiktoken's files: a UserError
    assert enc.n_vocab <= np.iinfo(np.uint16).max + 1, "token ids must fit in uint16"
    examples, example_source = [], []  # every kept example (ids, mask, first user turn), and its file
    for k, source in enumerate(sources):
        kept = encode_input(source, template, train_on_prompt, max_len)
        if source["weight"] < 1:  # a seeded share of the file, in file order
            n = round(source["weight"] * len(kept))
            if n == 0:
                raise UserError(f"--input {source['input']} keeps none of the file's {len(kept)} examples; give a "
                                "larger weight")
            chosen = np.sort(np.random.default_rng((seed, 1, k)).choice(len(kept), n, replace=False))
            kept = [kept[i] for i in chosen]
        examples += kept
        example_source += [k] * len(kept)
    if not examples:
        skipped = ", ".join(f"{sum(s['skipped'][key] for s in sources)} {key.replace('_', ' ')}"
                            for key in sources[0]["skipped"])
        raise UserError(f"{', '.join(s['path'] for s in sources)}: no examples left: skipped {skipped}; "
                        f"{sum(s['dropped_too_long'] for s in sources)} longer than --max_len {max_len}")

    # 3. Split: one seeded permutation; val is its head, train the rest, each kept in permutation order.
    n_train, n_val = split_sizes(val_size, len(examples))
    order = np.random.default_rng(seed).permutation(len(examples))
    split_order = {"train": order[n_val:], "val": order[:n_val]}
    # A weight above 1 repeats the file's training examples: whole copies, then a seeded share of them once more.
    rng = np.random.default_rng((seed, 2))
    repeats = []
    for k, source in enumerate(sources):
        if source["weight"] > 1:
            own = [i for i in split_order["train"] if example_source[i] == k]
            whole, share = divmod(source["weight"], 1)
            repeats += own * (int(whole) - 1) + list(rng.choice(own, round(share * len(own)), replace=False))
    if repeats:
        split_order["train"] = rng.permutation(np.concatenate([split_order["train"], repeats]))
        n_train = len(split_order["train"])
    for k, source in enumerate(sources):
        for split, indices in split_order.items():
            source[split] = sum(example_source[i] == k for i in indices)

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
    given = [spec for spec, _, _ in specs]
    val = str(int(val_size)) if val_size >= 1 else repr(val_size)  # exactly (a count of 1234567 is not 1.2e6)
    command = ["python", "prepare_alpaca.py",
               *([a for spec in given for a in ("--input", spec)] if inputs else ["--url", url]),
               *(["--format", fmt] if fmt else []), *(["--skip_bad"] if skip_bad else []),
               "--template", template, *(["--system_prompt", system_prompt] if system_prompt else []),
               *(["--train_on_prompt"] if train_on_prompt else []), "--val_size", val,
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
        "source": ", ".join(given),
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "records": sum(s["records"] for s in sources),
        "skipped": {key: sum(s["skipped"][key] for s in sources) for key in sources[0]["skipped"]},
        "dropped_too_long": sum(s["dropped_too_long"] for s in sources),
        "sources": [{key: s[key] for key in ("input", "format", "weight", "records", "skipped", "dropped_too_long",
                                             "kept", "train", "val", "ignored_fields")} for s in sources],
    }
    arrays = {f"{split}_{name}.bin": array for split, named in splits.items() for name, array in named.items()}
    data.write_prepared(out_dir, arrays, meta, prompts)

    # 5. Summary.
    lengths = np.array([len(ids) for ids, _, _ in examples])
    n_targets = sum(sum(mask) for _, mask, _ in examples)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    for s in sources:
        weighted = len(sources) > 1 or s["weight"] != 1
        print(f"read:              {s['records']:,} {s['format']} records from {s['path']}"
              + (f" (weight {s['weight']:g}): {s['train']:,} train, {s['val']:,} val" if weighted else ""))
        if s["ignored_fields"]:
            print(f"ignored fields:    {', '.join(s['ignored_fields'])} (not part of the {s['format']} format)")
    skipped = meta["skipped"]
    print(f"kept:              {len(examples):,}")
    print(f"skipped:           {skipped['empty_instruction']:,} empty instruction, "
          f"{skipped['empty_output']:,} empty output, {skipped['bad_conversation']:,} bad conversation")
    print(f"dropped too long:  {meta['dropped_too_long']:,} (over max_len={max_len} tokens)")
    print(f"tokens/example:    mean {lengths.mean():.1f}, p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, "
          f"max {lengths.max()}")
    print(f"target tokens:     {n_targets:,} of {lengths.sum():,} ({100 * n_targets / lengths.sum():.1f}%)")
    print(f"split:             {n_train:,} train, {n_val:,} val (seed {seed})")
    print(f"wrote:             {os.path.join(out_dir, '{train,val}_{ids,mask,offsets}.bin')}, "
          f"{{train,val}}_prompts.json and meta.json")
    return meta


def main(argv=None) -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--input", action="append",
                        help="a local .json (a list) or .jsonl file, optionally with :weight; may be repeated")
    parser.add_argument("--format", choices=list(FORMATS),
                        help="every input file's format (default: each file's, from its first record)")
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
    args = parser.parse_args(argv)
    prepare(inputs=args.input, url=args.url, out_dir=args.out_dir, template=args.template,
            system_prompt=args.system_prompt, train_on_prompt=args.train_on_prompt, val_size=args.val_size,
            max_len=args.max_len, seed=args.seed, fmt=args.format, skip_bad=args.skip_bad)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
