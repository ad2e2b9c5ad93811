"""prepare_alpaca.py's three input formats (Alpaca, "messages", ShareGPT), multi-turn conversations and mixes of
files: checked against ids and masks written by hand, against transformers' apply_chat_template, and through the
real command line for every kind of bad record.

GPT-2 BPE facts used (encode_ordinary, each checked once with tiktoken.get_encoding("gpt2")), as in
test_chat_template.py: "\n" -> [198], "user" -> [7220], "assistant" -> [562, 10167], "system" -> [10057],
"Be brief." -> [3856, 4506, 13], "Hi" -> [17250], "Hello!" -> [15496, 0], "What is 2+2?" -> [2061, 318, 362, 10,
17, 30], "4" -> [19], "What is the capital of France?" -> [2061, 318, 262, 3139, 286, 4881, 30], "Paris." ->
[40313, 13]. Special ids: <|im_start|> 50257, <|im_end|> 50258.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ALPACA_5000, ROOT, needs_alpaca, needs_bpe

import alpaca_chats  # experiments/: the multi-turn demo's conversations
import prepare_alpaca

pytestmark = needs_bpe

SYSTEM = {"role": "system", "content": "Be brief."}
THREE_TURNS = [SYSTEM,
               {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
               {"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": "Paris."}]
# ChatML, by hand: (ids, mask) of each line of the rendered conversation
THREE_TURN_LINES = [
    ([50257, 10057, 198, 3856, 4506, 13, 50258, 198], [0, 0, 0, 0, 0, 0, 0, 0]),  # system: Be brief.
    ([50257, 7220, 198, 17250, 50258, 198], [0, 0, 0, 0, 0, 0]),  # user: Hi
    ([50257, 562, 10167, 198, 15496, 0, 50258, 198], [0, 0, 0, 0, 1, 1, 1, 0]),  # assistant: Hello! <|im_end|>
    ([50257, 7220, 198, 2061, 318, 362, 10, 17, 30, 50258, 198], [0] * 11),  # user: What is 2+2?
    ([50257, 562, 10167, 198, 19, 50258, 198], [0, 0, 0, 0, 1, 1, 0]),  # assistant: 4 <|im_end|>
    ([50257, 7220, 198, 2061, 318, 262, 3139, 286, 4881, 30, 50258, 198], [0] * 12),  # user: ... France?
    ([50257, 562, 10167, 198, 40313, 13, 50258, 198], [0, 0, 0, 0, 1, 1, 1, 0]),  # assistant: Paris. <|im_end|>
]
THREE_TURN_IDS = [i for ids, _ in THREE_TURN_LINES for i in ids]
THREE_TURN_MASK = [m for _, mask in THREE_TURN_LINES for m in mask]
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}
DATA_FILES = [f"{split}_{name}" for split in ("train", "val") for name in
              ("ids.bin", "mask.bin", "offsets.bin", "prompts.json")]


def as_messages(conversation, **extra):
    return {"messages": conversation, **extra}


def as_sharegpt(conversation):
    return {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in conversation]}


def as_alpaca(conversation):  # a single exchange, without its system message (that comes from --system_prompt)
    user, assistant = [m for m in conversation if m["role"] != "system"]
    return {"instruction": user["content"], "output": assistant["content"]}


def write(path, records, jsonl=False):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) if jsonl else json.dumps(records))
    return str(path)


def examples(out_dir, split="train"):
    """(ids, mask) lists of every example of a prepared split, read from the files as a trainer does."""
    ids = np.fromfile(os.path.join(out_dir, f"{split}_ids.bin"), dtype=np.uint16)
    mask = np.fromfile(os.path.join(out_dir, f"{split}_mask.bin"), dtype=np.uint8)
    offsets = np.fromfile(os.path.join(out_dir, f"{split}_offsets.bin"), dtype=np.int64)
    return [(ids[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def prompts(out_dir, split="train"):
    with open(os.path.join(out_dir, f"{split}_prompts.json"), encoding="utf-8") as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# each format, by hand


def test_alpaca_record_by_hand(tmp_path):
    path = write(tmp_path / "a.json", [{"instruction": "What is the capital of France?", "output": "Paris."}])
    meta = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"), val_size=0, system_prompt="Be brief.")
    lines = [THREE_TURN_LINES[0], THREE_TURN_LINES[5], THREE_TURN_LINES[6]]
    expected = ([i for ids, _ in lines for i in ids], [m for _, mask in lines for m in mask])
    assert examples(tmp_path / "out") == [expected]
    assert meta["sources"][0]["format"] == "alpaca"


@pytest.mark.parametrize("fmt", ["messages", "sharegpt"])
def test_three_turns_with_a_system_message_by_hand(tmp_path, fmt):
    record = as_messages(THREE_TURNS) if fmt == "messages" else as_sharegpt(THREE_TURNS)
    path = write(tmp_path / "c.jsonl", [record], jsonl=True)
    # the record's own system message wins over --system_prompt
    meta = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"), val_size=0, system_prompt="Other.")
    assert examples(tmp_path / "out") == [(THREE_TURN_IDS, THREE_TURN_MASK)]
    assert prompts(tmp_path / "out") == ["Hi"]  # the first user turn: what sample.py --prompts_from asks
    assert meta["sources"][0]["format"] == fmt and meta["n_train"] == 1


def test_system_prompt_fills_in_for_a_conversation_without_one(tmp_path):
    path = write(tmp_path / "c.json", [as_messages(THREE_TURNS[1:])])
    prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"), val_size=0, system_prompt="Be brief.")
    assert examples(tmp_path / "out") == [(THREE_TURN_IDS, THREE_TURN_MASK)]


def test_a_system_field_an_empty_system_turn_and_a_record_with_both(tmp_path):
    """A "system" field (LLaMA-Factory's variant) is the system message; an empty system turn is none, so
    --system_prompt fills in; a field and a turn in one record is an error (one of them would be lost)."""
    cases = {"field": {**as_sharegpt(THREE_TURNS[1:]), "system": "Be brief."},
             "empty-turn": as_messages([{"role": "system", "content": ""}, *THREE_TURNS[1:]])}
    for name, record in cases.items():
        prepare_alpaca.prepare(inputs=[write(tmp_path / f"{name}.json", [record])], out_dir=str(tmp_path / name),
                               val_size=0, system_prompt="Be brief." if name == "empty-turn" else "Other.")
        assert examples(tmp_path / name) == [(THREE_TURN_IDS, THREE_TURN_MASK)], name
    alpaca = {"instruction": "What is the capital of France?", "output": "Paris.", "system": "Be brief."}
    prepare_alpaca.prepare(inputs=[write(tmp_path / "a.json", [alpaca])], out_dir=str(tmp_path / "a"), val_size=0,
                           system_prompt="Other.")
    lines = [THREE_TURN_LINES[0], THREE_TURN_LINES[5], THREE_TURN_LINES[6]]
    assert examples(tmp_path / "a")[0][0] == [i for ids, _ in lines for i in ids]
    both = {**as_messages(THREE_TURNS), "system": "Other."}
    with pytest.raises(prepare_alpaca.UserError, match="record 0 has a 'system' field and a system turn"):
        prepare_alpaca.prepare(inputs=[write(tmp_path / "both.json", [both])], out_dir=str(tmp_path / "both"))


# -----------------------------------------------------------------------------
# the same conversations in every format: byte-identical files


def prepared_bytes(out_dir):
    return {name: (out_dir / name).read_bytes() for name in DATA_FILES}


def test_the_same_conversations_in_three_formats_give_identical_files(tmp_path):
    single = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
              for i in range(6)]
    converters = {"alpaca": as_alpaca, "messages": as_messages, "sharegpt": as_sharegpt}
    files, metas = {}, {}
    for fmt, convert in converters.items():
        jsonl = fmt != "alpaca"  # (either way of writing a file is read the same)
        path = write(tmp_path / (f"{fmt}.jsonl" if jsonl else f"{fmt}.json"), [convert(c) for c in single], jsonl)
        metas[fmt] = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / fmt), val_size=2,
                                            system_prompt="Be brief.")
        files[fmt] = prepared_bytes(tmp_path / fmt)
    assert files["alpaca"] == files["messages"] == files["sharegpt"]
    assert len(examples(tmp_path / "alpaca")) == 4 and len(examples(tmp_path / "alpaca", "val")) == 2
    named_by_input = ("command", "source", "sources")  # meta.json differs only where it names the input
    assert len({json.dumps({k: v for k, v in m.items() if k not in named_by_input}) for m in metas.values()}) == 1

    # multi-turn: messages and ShareGPT
    conversations = [THREE_TURNS, THREE_TURNS[1:5], THREE_TURNS[:3]]
    for fmt in ("messages", "sharegpt"):
        path = write(tmp_path / f"multi_{fmt}.json", [converters[fmt](c) for c in conversations])
        prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / f"multi_{fmt}"), val_size=1)
    assert prepared_bytes(tmp_path / "multi_messages") == prepared_bytes(tmp_path / "multi_sharegpt")


# -----------------------------------------------------------------------------
# bad input, through the real command line: one `error:` line naming the record and the fix, exit 2, no files


def run_cli(tmp_path, *args):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "prepare_alpaca.py", *args, "--out_dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    return result, out


HI = {"role": "user", "content": "Hi"}
HELLO = {"role": "assistant", "content": "Hello!"}
BAD = {
    "not-alternating": ([as_messages([HI, HELLO]), as_messages([HI, HI, HELLO])],
                        ["record 1: turn 1 is the user's where the assistant's should be", "--skip_bad"]),
    "ends-with-user": ([as_messages([HI, HELLO, HI])], ["record 0: it ends with the user's turn", "--skip_bad"]),
    "empty-content": ([as_messages([HI, HELLO]), as_messages([HI, {"role": "assistant", "content": " "}])],
                      ["record 1: turn 1 (assistant) is empty", "--skip_bad"]),
    "unknown-role": ([as_messages([HI, {"role": "tool", "content": "42"}])],
                     ["record 0, turn 1: 'role' is 'tool', not one of 'system', 'user', 'assistant'", "rename"]),
    "sharegpt-from": ([as_sharegpt([HI, HELLO]), {"conversations": [{"from": "human", "value": "Hi"},
                                                                    {"from": "bot", "value": "Hello!"}]}],
                      ["record 1, turn 1: 'from' is 'bot', not one of 'system', 'human', 'gpt'", "rename"]),
    "mixed-formats": ([as_messages([HI, HELLO]), as_messages([HI, HELLO]), as_sharegpt([HI, HELLO])],
                      ["record 2 is in the sharegpt format ('conversations'), but this file is messages",
                       "its own file"]),
    "name-field": ([as_messages([HI, {**HELLO, "name": "bot"}])],
                   ["record 0, turn 1 has 'name' besides 'role' and 'content'", "remove"]),
    "alpaca-history": ([{"instruction": "And?", "output": "No.", "history": [["Hi", "Hello!"]]}],
                       ["record 0 has 'history'", "remove"]),
    "tool-calls": ([as_messages([HI, HELLO], tools=[{"type": "function"}])], ["record 0 has 'tools'", "remove"]),
    "no-format": ([{"prompt": "Hi", "completion": "Hello!"}],
                  ["record 0 has none of 'instruction' (alpaca), 'messages' (messages), 'conversations' "
                   "(sharegpt)", "--format"]),
    "content-not-text": ([as_messages([HI, {"role": "assistant", "content": ["Hello!"]}])],
                         ["record 0, turn 1: 'content' is a JSON list, expected a string"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_records_are_one_line_exit_2_and_nothing_written(tmp_path, case):
    records, expected = BAD[case]
    path = write(tmp_path / "bad.jsonl", records, jsonl=True)
    result, out = run_cli(tmp_path, "--input", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
    for words in expected:
        assert words in lines[0]
    assert not out.exists()


def test_the_guides_troubleshooting_rows_are_the_real_lines(tmp_path):
    """docs/GUIDE.md shows two of these lines word for word: they are what the command prints."""
    again = {"role": "user", "content": "Hello?"}
    write(tmp_path / "chats.jsonl", [as_messages([HI, HELLO]), as_messages([HI, again])], jsonl=True)
    write(tmp_path / "mixed.jsonl", [as_messages([HI, HELLO]), as_sharegpt([HI, HELLO])], jsonl=True)
    with open(os.path.join(ROOT, "docs", "GUIDE.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `python prepare_alpaca.py --input ") and ".jsonl`" in line]
    assert len(rows) == 2
    for row in rows:
        name = row.split("--input ")[1].split("`")[0]
        shown = row.rstrip().rsplit("| `", 1)[1].removesuffix("` |")
        result = subprocess.run([sys.executable, os.path.join(ROOT, "prepare_alpaca.py"), "--input", name],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr.strip()) == (2, shown)
    assert not (tmp_path / "data").exists()


def test_bad_weight_and_bad_format_flag(tmp_path):
    path = write(tmp_path / "a.json", [as_alpaca([HI, HELLO])])
    result, out = run_cli(tmp_path, "--input", path + ":-1")
    assert result.returncode == 2 and result.stderr.startswith(f"error: --input {path}:-1: the weight after")
    result, out = run_cli(tmp_path, "--input", path, "--format", "messages")
    assert result.returncode == 2 and "--format messages was given, but record 0 is in the alpaca format" \
        in result.stderr and "leave it out" in result.stderr
    result, out = run_cli(tmp_path, "--input", path, "--input", path)  # one copy's val would be in the other's train
    assert result.returncode == 2 and "the same file is given twice" in result.stderr and f"{path}:2" in result.stderr
    assert not out.exists()


def test_skip_bad_drops_and_counts(tmp_path):
    records = [as_messages([HI, HELLO]), as_messages([HI, HI, HELLO]), as_messages([HI, HELLO, HI]),
               as_messages([HI, {"role": "assistant", "content": ""}]), as_messages([SYSTEM])]
    meta = prepare_alpaca.prepare(inputs=[write(tmp_path / "c.json", records)], out_dir=str(tmp_path / "out"),
                                  val_size=0, skip_bad=True)
    assert meta["skipped"]["bad_conversation"] == 4 and meta["n_train"] == 1
    assert meta["command"][2:5] == ["--input", str(tmp_path / "c.json"), "--skip_bad"]


def test_other_fields_are_ignored_and_named(tmp_path, capsys):
    records = [as_messages([HI, HELLO], id=i, category="chat") for i in range(3)]
    meta = prepare_alpaca.prepare(inputs=[write(tmp_path / "c.json", records)], out_dir=str(tmp_path / "out"),
                                  val_size=0)
    assert meta["sources"][0]["ignored_fields"] == ["category", "id"]
    assert "ignored fields:    category, id (not part of the messages format)" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# a mix of files, with weights


def mix_files(tmp_path):
    a = [as_messages([{"role": "user", "content": f"A{i}"}, HELLO]) for i in range(30)]
    b = [as_sharegpt([{"role": "user", "content": f"B{i}"}, HELLO]) for i in range(20)]
    return write(tmp_path / "a.jsonl", a, jsonl=True), write(tmp_path / "b.json", b)


def file_counts(out_dir, split):
    names = prompts(out_dir, split)
    return sum(p.startswith("A") for p in names), sum(p.startswith("B") for p in names)


def test_a_mix_with_a_weight_below_1(tmp_path):
    a, b = mix_files(tmp_path)
    runs = []
    for run in ("one", "two"):
        meta = prepare_alpaca.prepare(inputs=[a, b + ":0.5"], out_dir=str(tmp_path / run), val_size=0.25)
        runs.append(prepared_bytes(tmp_path / run))
    assert runs[0] == runs[1]  # deterministic for a seed
    # 30 + 10 (half of b, chosen before the split) = 40 examples: 10 in val, 30 in train
    assert (meta["n_train"], meta["n_val"]) == (30, 10)
    train, val = file_counts(tmp_path / "one", "train"), file_counts(tmp_path / "one", "val")
    assert train[0] + val[0] == 30 and train[1] + val[1] == 10
    assert [(s["format"], s["weight"], s["train"], s["val"]) for s in meta["sources"]] == [
        ("messages", 1.0, train[0], val[0]), ("sharegpt", 0.5, train[1], val[1])]
    assert len(set(prompts(tmp_path / "one", "train") + prompts(tmp_path / "one", "val"))) == 40  # no repeats
    prepare_alpaca.prepare(inputs=[a, b + ":0.5"], out_dir=str(tmp_path / "other"), val_size=0.25, seed=7)
    assert prepared_bytes(tmp_path / "other") != runs[0]  # another seed, another mix and split


def test_a_mix_with_a_weight_above_1(tmp_path):
    a, b = mix_files(tmp_path)
    meta = prepare_alpaca.prepare(inputs=[a, b + ":2.5"], out_dir=str(tmp_path / "out"), val_size=10)
    val = prompts(tmp_path / "out", "val")
    b_val = sum(p.startswith("B") for p in val)
    b_train = 20 - b_val  # b's examples that went to train, before the repeats
    train = prompts(tmp_path / "out", "train")
    assert len(val) == len(set(val)) == 10 and not set(val) & set(train)  # val: one copy, never in train
    assert file_counts(tmp_path / "out", "train") == (30 - (10 - b_val), 2 * b_train + round(0.5 * b_train))
    counts = {p: train.count(p) for p in train if p.startswith("B")}
    assert set(counts.values()) <= {2, 3} and len(counts) == b_train  # each twice, half of them three times
    assert meta["n_train"] == len(train)


# -----------------------------------------------------------------------------
# against transformers' apply_chat_template, on 200 multi-turn conversations of real Alpaca records

# ChatML, written for transformers with {% generation %} around what the assistant says (its mask)
CHATML_JINJA = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
                "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
                "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}")


def hf_chatml_tokenizer():
    """GPT-2's own vocab.json (encoder.json) and merges (vocab.bpe) from ../shared, read by transformers."""
    from conftest import SHARED
    from transformers import GPT2TokenizerFast

    with open(os.path.join(SHARED, "gpt2", "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(SHARED, "gpt2", "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [50257, 50258]
    tokenizer.chat_template = CHATML_JINJA
    return tokenizer


@needs_alpaca
def test_against_transformers_apply_chat_template_on_200_multi_turn_conversations(tmp_path):
    tokenizer = hf_chatml_tokenizer()
    with open(ALPACA_5000, encoding="utf-8") as f:
        conversations = alpaca_chats.alpaca_chats(json.load(f), 200)
    assert sum(len(c) > 3 for c in conversations) >= 130  # most are multi-turn
    expected = []
    for conversation in conversations:
        out = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        expected.append((list(out["input_ids"]), list(out["assistant_masks"])))
    path = write(tmp_path / "chats.jsonl", [as_messages(c) for c in conversations], jsonl=True)
    meta = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"), val_size=0)
    assert meta["n_train"] == 200 and meta["dropped_too_long"] == 0
    assert sorted(examples(tmp_path / "out")) == sorted(expected)


# -----------------------------------------------------------------------------
# Parquet, ShareGPT as it is found, --roles, and a hub dataset from huggingface_hub's cache


def write_parquet(path, records):
    pq = pytest.importorskip("pyarrow.parquet")  # (requirements-dev.txt installs it: CI runs these)
    import pyarrow

    pq.write_table(pyarrow.Table.from_pylist(records), path)
    return str(path)


ALPACA_LINES = [THREE_TURN_LINES[0], THREE_TURN_LINES[5], THREE_TURN_LINES[6]]  # system, one exchange


@pytest.mark.parametrize("fmt", ["alpaca", "messages", "sharegpt"])
def test_parquet_in_each_format_by_hand(tmp_path, fmt):
    """Alpaca columns; a messages column of structs (with a "name" field, null in every turn: Parquet gives every
    row every field, so a null is no name); a conversations column. Other columns are ignored, and named."""
    records = {"alpaca": [{**as_alpaca(THREE_TURNS[:1] + THREE_TURNS[5:]), "input": None, "system": "Be brief."}],
               "messages": [as_messages([{**m, "name": None} for m in THREE_TURNS])],
               "sharegpt": [as_sharegpt(THREE_TURNS)]}[fmt]
    path = write_parquet(tmp_path / "d.parquet", [{**r, "id": 7, "source": "x"} for r in records])
    meta = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"), val_size=0)
    lines = ALPACA_LINES if fmt == "alpaca" else THREE_TURN_LINES
    expected = ([i for ids, _ in lines for i in ids], [m for _, mask in lines for m in mask])
    assert examples(tmp_path / "out") == [expected]
    assert meta["sources"][0]["format"] == fmt and meta["sources"][0]["ignored_fields"] == ["id", "source"]


def test_parquet_with_an_unknown_layout_or_a_bad_row_is_one_clear_line(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"prompt": "Hi", "completion": "Hello!"}])
    result, out = run_cli(tmp_path, "--input", path)
    assert result.returncode == 2 and result.stderr == (
        f"error: {path}: its columns have none of 'instruction' (alpaca), 'messages' (messages), 'conversations' "
        "(sharegpt), so its format is unclear (its columns: ['completion', 'prompt']); name it with --format "
        "alpaca|messages|sharegpt\n")
    named = write_parquet(tmp_path / "n.parquet", [as_messages([HI, HELLO]), as_messages([HI, {**HELLO, "name": "x"}])])
    with pytest.raises(prepare_alpaca.UserError, match="n.parquet: record 1, turn 1 has 'name' besides"):
        prepare_alpaca.prepare(inputs=[named], out_dir=str(out))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(prepare_alpaca.UserError, match="broken.parquet is not a readable Parquet file"):
        prepare_alpaca.prepare(inputs=[str(tmp_path / "broken.parquet")], out_dir=str(out))
    assert not out.exists()


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "d.parquet", [as_messages([HI, HELLO])])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(prepare_alpaca.UserError, match=r"d.parquet is a Parquet file: reading it needs pyarrow "
                                                       r"\(pip install pyarrow\)"):
        prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_sharegpt_with_our_role_names_and_roles_mapped_by_flag(tmp_path):
    """Many ShareGPT files say user/assistant/system; other spellings are mapped with --roles."""
    as_is = {"conversations": [{"from": m["role"], "value": m["content"]} for m in THREE_TURNS]}
    other = {"bot": "assistant", "prompter": "user", "sys": "system"}
    spelled = {"conversations": [{"from": {v: k for k, v in other.items()}[m["role"]], "value": m["content"]}
                                 for m in THREE_TURNS]}
    path = write(tmp_path / "as_is.jsonl", [as_is], jsonl=True)
    prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "a"), val_size=0)
    assert examples(tmp_path / "a") == [(THREE_TURN_IDS, THREE_TURN_MASK)]
    path = write(tmp_path / "spelled.jsonl", [spelled], jsonl=True)
    result, out = run_cli(tmp_path, "--input", path)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {path}: record 0, turn 0: 'from' is 'sys', not one of 'system', 'human', 'gpt', 'user', "
        "'assistant'; map it to one of ours with --roles sys=assistant (or user, system), rename it, or remove "
        "the record")
    meta = prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "b"), val_size=0,
                                  roles="bot=assistant, prompter=user,sys=system")
    assert examples(tmp_path / "b") == [(THREE_TURN_IDS, THREE_TURN_MASK)]
    assert meta["command"][4:6] == ["--roles", "bot=assistant, prompter=user,sys=system"]
    with pytest.raises(prepare_alpaca.UserError, match="^--roles bot=helper: give name=role pairs"):
        prepare_alpaca.prepare(inputs=[path], out_dir=str(tmp_path / "c"), roles="bot=helper")


def hub_cache(cache, repo, shards):
    """A dataset's Parquet files laid out as huggingface_hub caches them: blobs, a snapshot of links to them, and
    the ref the hub's Parquet conversion lives under."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs" / "refs" / "convert").mkdir(parents=True)
    (folder / "refs" / "refs" / "convert" / "parquet").write_text(commit)
    (folder / "blobs").mkdir()
    (folder / "snapshots" / commit / "default" / "train").mkdir(parents=True)
    for k, records in enumerate(shards):
        blob = folder / "blobs" / f"blob{k}"
        write_parquet(blob, records)
        (folder / "snapshots" / commit / "default" / "train" / f"{k:04d}.parquet").symlink_to(blob)


def test_a_hub_dataset_is_read_from_huggingface_hubs_cache_offline(tmp_path):
    pytest.importorskip("huggingface_hub")
    chats = [as_messages([{"role": "user", "content": f"Question {i}?"}, HELLO]) for i in range(30)]
    hub_cache(tmp_path / "hub", "org/chats", [chats[:20], chats[20:]])
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    local = write(tmp_path / "chats.jsonl", chats, jsonl=True)

    def run(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "prepare_alpaca.py"), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    result = run("--input", "hf:org/chats", "--out_dir", "hub_out")
    assert result.returncode == 0, result.stderr
    prepare_alpaca.prepare(inputs=[local], out_dir=str(tmp_path / "local_out"))
    assert prepared_bytes(tmp_path / "hub_out") == prepared_bytes(tmp_path / "local_out")
    with open(tmp_path / "hub_out" / "meta.json") as f:
        files = json.load(f)["sources"][0]["files"]
    assert [os.path.relpath(f, tmp_path / "hub") for f in files] == [
        f"datasets--org--chats/snapshots/0123456789abcdef0123456789abcdef01234567/default/train/000{k}.parquet"
        for k in (0, 1)]
    missing = run("--input", "hf:org/other", "--out_dir", "other")
    assert missing.returncode == 2 and len(missing.stderr.strip().split("\n")) == 1
    assert missing.stderr.startswith("error: --input hf:org/other: could not get org/other's Parquet files from "
                                     f"the hub, and huggingface_hub's cache ({tmp_path / 'hub'}) has no copy")
    split = run("--input", "hf:org/chats/default/test", "--out_dir", "other")
    assert split.returncode == 2 and "has no Parquet files for config 'default', split 'test'; it has " \
        "default/train: name one as hf:org/chats/CONFIG/SPLIT" in split.stderr
    assert not (tmp_path / "other").exists()


def test_a_folder_or_a_glob_is_a_set_of_shards(tmp_path):
    (tmp_path / "set").mkdir()
    chats = [as_messages([{"role": "user", "content": f"Question {i}?"}, HELLO]) for i in range(12)]
    write(tmp_path / "set" / "b.jsonl", chats[6:], jsonl=True)
    write(tmp_path / "set" / "a.json", chats[:6])
    (tmp_path / "set" / "README.md").write_text("not a shard")
    whole = write(tmp_path / "whole.jsonl", chats, jsonl=True)
    for name, spec in [("whole", whole), ("folder", str(tmp_path / "set")), ("glob", str(tmp_path / "set" / "*.js*"))]:
        meta = prepare_alpaca.prepare(inputs=[spec], out_dir=str(tmp_path / name), val_size=3)
        assert meta["records"] == 12 and meta["source"] == spec
    assert prepared_bytes(tmp_path / "whole") == prepared_bytes(tmp_path / "folder") == \
        prepared_bytes(tmp_path / "glob")
    (tmp_path / "empty").mkdir()
    with pytest.raises(prepare_alpaca.UserError, match="empty is a folder with no .parquet, .jsonl, .json files"):
        prepare_alpaca.prepare(inputs=[str(tmp_path / "empty")], out_dir=str(tmp_path / "out"))
    with pytest.raises(prepare_alpaca.UserError, match="the same file is given twice"):
        prepare_alpaca.prepare(inputs=[str(tmp_path / "set"), str(tmp_path / "set" / "a.json")],
                               out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
