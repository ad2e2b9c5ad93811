"""prepare_alpaca.py at scale: the same files, byte for byte, as before streaming (3e30864), whatever the chunk size,
the number of workers and the file layout (JSON list, JSON Lines, Parquet, shards); the first bad record reported
whatever the chunking; memory that does not grow with the file; record_files' JSON list parser against json.loads."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ALPACA_5000, ROOT, needs_alpaca, needs_bpe

import prepare_alpaca
import record_files
from errors import UserError

pq = pytest.importorskip("pyarrow.parquet")  # (requirements-dev.txt installs it: CI runs these)
pytestmark = needs_bpe

DATA_FILES = [f"{split}_{name}" for split in ("train", "val") for name in
              ("ids.bin", "mask.bin", "offsets.bin", "prompts.json")]
# sha256 of what prepare_alpaca.py wrote at 3e30864, before it streamed (checked out and run on these inputs)
ALPACA_3E30864 = {  # --input alpaca_5000.json, every other option at its default
    "train_ids.bin": "a98a9a0eccb614dab92328d4f59bea1953e4f3d164155eb01303861335dc637b",
    "train_mask.bin": "58b2caad092cddfa2e8345c44f1ecf7d0f65d5c7a375d4f01de82c3d5d1d3008",
    "train_offsets.bin": "0275406ed4e86e0dd38688c277df56058d7051c972d09286a651784122bc9402",
    "train_prompts.json": "eacb346a34d95ad80d29d7378186267fc14502fdd41aa2b59576af8dabe31a20",
    "val_ids.bin": "666623661d084a048a4747dbf28e1a7e3fe39fe908e979a610de38049ed0da7a",
    "val_mask.bin": "29051193f94c43cbda27b370122eacddc28a076a6df7977a15f90fbbccdb9139",
    "val_offsets.bin": "d2ccd7ed655819c47cc13613122664ec261a223c48221fa709e32ef9da7c1cf2",
    "val_prompts.json": "125ca5c4d6f4e2828d9c35f7082a7d990ddd6b87d6851b8c37775011e9fb69ec"}
MIX_3E30864 = {  # mix_inputs(): MIX_OPTIONS
    "train_ids.bin": "ef08006645e2df20bd7a2ffc41cc6e40541d8ae0c6b34960d25bd040116017f8",
    "train_mask.bin": "f00beef322d484d4d25f60691cb29cafc3febc06e0f3fa0d56e2de315d90c131",
    "train_offsets.bin": "413cca2a6f0e939491242a4feabefd3f832084cf463ba4c726df1008b33e9644",
    "train_prompts.json": "3f779e69953eb80292eec21fa3f7a16329c0cf4833b66defa14b1a0643e21b7b",
    "val_ids.bin": "5db39f6daa3af28c35ca955fa8bb7f6c41ed5d8c829a48547fe05f283d096a23",
    "val_mask.bin": "aa686428b4c5bfe1dcad3ca593bc94e6cd4f059b76f13949b8bbc08c1215546a",
    "val_offsets.bin": "91237a63b2ec74ae5da14679a78740b29268c291409f8dc26212126fb8387f5a",
    "val_prompts.json": "adb17d3d0c4d216e003bc0c3a7de5c8f06332a3a7c7b27f18a3d98c515e7c986"}
MIX_OPTIONS = dict(skip_bad=True, system_prompt="Be brief.", val_size=0.1, max_len=256)
MIX_META = {"n_train": 1484, "n_val": 107, "records": 1400, "dropped_too_long": 177,  # meta.json at 3e30864
            "kept": [531, 293, 391], "train": [482, 130, 872], "val": [49, 16, 42]}


def sha256s(out_dir) -> dict:
    return {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest() for name in DATA_FILES}


def messages_of(r, system=None):
    user = r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]


def mix_records():
    """Three files of the Alpaca sample in the three formats: 700 multi-turn "messages" chats (every 97th ends
    with the user's turn; one has U+2028, accents and CJK), 300 ShareGPT records, 400 Alpaca records (every 5th
    with a system field)."""
    with open(ALPACA_5000, encoding="utf-8") as f:
        records = json.load(f)
    a, i = [], 0
    for k in range(700):
        conversation = [{"role": "system", "content": "You are helpful."}] if k % 2 else []
        for r in records[i: i + 1 + k % 3]:
            conversation += messages_of(r)
        i += 1 + k % 3
        record = {"messages": conversation[:-1] if k % 97 == 5 else conversation, "id": k}
        if k == 10:
            record["messages"][-1]["content"] += " line\u2028sep caf\u00e9 \u4e2d\u6587"
        a.append(record)
    sharegpt = {"system": "system", "user": "human", "assistant": "gpt"}
    b = [{"conversations": [{"from": sharegpt[m["role"]], "value": m["content"]}
                            for m in messages_of(r, "Be terse." if j % 3 == 0 else None)]}
         for j, r in enumerate(records[2500:2800])]
    c = [dict(r, **({"system": "Sys field."} if j % 5 == 0 else {})) for j, r in enumerate(records[3000:3400])]
    return a, b, c


def mix_inputs(folder):
    """The mix as 3e30864 read it: a.jsonl (every other line ASCII-escaped), b.json (indented), c.json."""
    a, b, c = mix_records()
    with open(folder / "a.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=k % 2 == 0) + "\n" for k, r in enumerate(a)))
    (folder / "b.json").write_text(json.dumps(b, indent=1), encoding="utf-8")
    (folder / "c.json").write_text(json.dumps(c), encoding="utf-8")
    return [str(folder / "a.jsonl"), str(folder / "b.json") + ":0.5", str(folder / "c.json") + ":2.5"]


# -----------------------------------------------------------------------------
# the same bytes as before, whatever the chunking


@needs_alpaca
def test_the_files_are_those_of_3e30864(tmp_path):
    """The README's figures were measured on data prepared before streaming: the bytes must not have moved."""
    meta = prepare_alpaca.prepare(inputs=[ALPACA_5000], out_dir=str(tmp_path / "alpaca"))
    assert sha256s(tmp_path / "alpaca") == ALPACA_3E30864
    assert (meta["n_train"], meta["n_val"], meta["records"]) == (4748, 250, 5000)
    meta = prepare_alpaca.prepare(inputs=mix_inputs(tmp_path), out_dir=str(tmp_path / "mix"), **MIX_OPTIONS)
    assert sha256s(tmp_path / "mix") == MIX_3E30864
    counts = {key: meta[key] for key in ("n_train", "n_val", "records", "dropped_too_long")}
    assert counts | {key: [s[key] for s in meta["sources"]] for key in ("kept", "train", "val")} == MIX_META
    assert meta["sources"][0]["ignored_fields"] == ["id"] and meta["skipped"]["bad_conversation"] == 8


@needs_alpaca
def test_chunk_sizes_and_workers_give_the_same_files(tmp_path):
    inputs = mix_inputs(tmp_path)
    runs = {}
    for chunk_size, workers in [(1, 1), (7, 2), (prepare_alpaca.CHUNK_SIZE, 1)]:
        out = tmp_path / f"out_{chunk_size}_{workers}"
        meta = prepare_alpaca.prepare(inputs=inputs, out_dir=str(out), chunk_size=chunk_size, workers=workers,
                                      **MIX_OPTIONS)
        runs[chunk_size, workers] = sha256s(out), meta
        assert sorted(os.listdir(out)) == sorted([*DATA_FILES, "meta.json"])  # no scratch files left
    first = next(iter(runs.values()))
    assert all(run == first for run in runs.values()) and first[0] == MIX_3E30864


@needs_alpaca
def test_json_list_json_lines_and_parquet_give_the_same_files(tmp_path):
    """The 5,000 Alpaca records as a JSON list, JSON Lines and Parquet; the mix's chats as JSON Lines and Parquet
    (a messages column of structs, a conversations column), and as a folder of shards."""
    with open(ALPACA_5000, encoding="utf-8") as f:
        records = json.load(f)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pq.write_table(pyarrow_table(records), tmp_path / "a.parquet", row_group_size=700)
    files = {}
    for name in (ALPACA_5000, tmp_path / "a.jsonl", tmp_path / "a.parquet"):
        out = tmp_path / f"out_{os.path.basename(name)}"
        prepare_alpaca.prepare(inputs=[str(name)], out_dir=str(out), chunk_size=300)
        files[os.path.basename(name)] = sha256s(out)
    assert files["alpaca_5000.json"] == files["a.jsonl"] == files["a.parquet"] == ALPACA_3E30864

    chats, sharegpt, _ = mix_records()
    (tmp_path / "shards").mkdir()
    pq.write_table(pyarrow_table(chats[:300]), tmp_path / "shards" / "part-0.parquet")
    (tmp_path / "shards" / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats[300:]))
    pq.write_table(pyarrow_table(sharegpt), tmp_path / "b.parquet")
    options = dict(skip_bad=True, val_size=0.1, max_len=256)
    one = prepare_alpaca.prepare(inputs=mix_inputs(tmp_path)[:2], out_dir=str(tmp_path / "o1"), **options)
    shards = prepare_alpaca.prepare(inputs=[str(tmp_path / "shards"), str(tmp_path / "b.parquet") + ":0.5"],
                                    out_dir=str(tmp_path / "o2"), **options)
    assert sha256s(tmp_path / "o1") == sha256s(tmp_path / "o2")
    assert shards["sources"][0]["files"] == [str(tmp_path / "shards" / f) for f in ("part-0.parquet", "part-1.jsonl")]
    assert shards["sources"][0]["ignored_fields"] == one["sources"][0]["ignored_fields"] == ["id"]


def pyarrow_table(records):
    import pyarrow

    return pyarrow.Table.from_pylist(records)


# -----------------------------------------------------------------------------
# errors: the first bad record, named, whatever the chunking; nothing left behind


def bad_deep_inside(n=8000, bad=6321):
    records = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(n)]
    records[bad] = {"instruction": "Question?"}  # no output
    records[bad + 5] = {"instruction": "Another?", "output": 7}  # a later error must not be the one reported
    return records


@pytest.mark.parametrize("layout", ["jsonl", "json", "parquet"])
def test_a_bad_record_deep_in_a_large_file_is_named_whatever_the_chunking(tmp_path, layout):
    records = bad_deep_inside()
    path = tmp_path / f"big.{layout}"
    if layout == "parquet":  # (a null output is a record without one)
        pq.write_table(pyarrow_table([{**r, "output": r.get("output") if r.get("output") != 7 else None}
                                      for r in records]), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records) if layout == "jsonl" else json.dumps(records))
    for chunk_size in (7, prepare_alpaca.CHUNK_SIZE):
        out = tmp_path / "data" / "out"  # data/ does not exist: made for the scratch files, and removed again
        with pytest.raises(UserError, match=f"^{path}: record 6321 has no 'output' field"):
            prepare_alpaca.prepare(inputs=[str(path)], out_dir=str(out), chunk_size=chunk_size)
        assert not (tmp_path / "data").exists()


def test_a_syntax_error_after_a_bad_record_reports_the_record(tmp_path):
    """A JSON list is parsed in the main process and its records checked in the workers: the bad record before a
    syntax error is still the one reported. Through the command line: one line, exit code 2, nothing written."""
    records = bad_deep_inside(3000, 1500)
    text = json.dumps(records)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"Question 1650?"')])  # cut off inside record 1650: 1500's chunk in flight
    result = subprocess.run([sys.executable, "prepare_alpaca.py", "--input", str(path), "--out_dir",
                             str(tmp_path / "out"), "--workers", "2", "--chunk_size", "100"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().split("\n") == [f"error: {path}: record 1500 has no 'output' field (its fields: "
                                                 "['instruction'])"]
    path.write_text(json.dumps(records[:1500])[:-1] + ', {"instruction": "x", "output": "y"},]')
    with pytest.raises(UserError, match=r"cut.json is not valid JSON: .* \(line 1, column \d+\)"):
        prepare_alpaca.prepare(inputs=[str(path)], out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# memory


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc/self/status")
def test_memory_does_not_grow_with_the_file(tmp_path):
    """A fresh process prepares 1,000 short records, then 100,000: its peak memory (VmHWM) grows by no more than
    ~100 bytes an example (their sizes, the split's permutation). 3e30864 needed 261 MiB more for the 100,000.
    (A small file gets no worker processes, so this process's peak is all of it.)"""
    for n in (1000, 100_000):
        with open(tmp_path / f"{n}.jsonl", "w") as f:
            f.writelines(json.dumps({"instruction": f"Question {i}: what is {i} + {i}?", "output": f"It is {2 * i}."})
                         + "\n" for i in range(n))
    code = ("import prepare_alpaca\n"
            "for n in (1000, 100_000):\n"
            f"    meta = prepare_alpaca.prepare(inputs=[f'{tmp_path}/{{n}}.jsonl'], out_dir=f'{tmp_path}/out{{n}}')\n"
            "    assert meta['n_train'] + meta['n_val'] == n\n"
            "    hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
            "    print('peak', hwm // 1024)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    small, large = (int(line.split()[1]) for line in result.stdout.split("\n") if line.startswith("peak "))
    assert large - small < 40, (small, large)


# -----------------------------------------------------------------------------
# the JSON list parser, against json.loads


def test_the_json_list_parser_reads_what_json_loads_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(record_files, "BLOCK", 7)  # every value cut by a block's end, many times over
    values = [{"a": [1, 2.5e-3, None, True, False], "b": "x\u2028y\n\"z\" caf\u00e9 \U0001f600"}, {"n": 1234567890},
              {}, {"nested": {"deep": [[], {}, "]"]}}, {"s": "[{,}]"}]
    for text in (json.dumps(values), json.dumps(values, indent=3), " \n[ ]\n", "[\r\n" + ",\n".join(map(json.dumps,
                                                                                                    values)) + "]"):
        path = tmp_path / "v.json"
        path.write_text(text, encoding="utf-8")
        assert list(record_files.json_list_records(str(path))) == json.loads(text)


@pytest.mark.parametrize("text", ['[{"a": 1},\n {"b": 2} {"c": 3}]', '[{"a": 1},\n\n  {"b": }]', '[{"a": 1},]',
                                  '[{"a": 1}\n', '[{"a": 1}] x', '[1, 2, {"a": "\\q"}]'])
def test_a_json_syntax_error_names_the_line_and_column_json_loads_names(tmp_path, monkeypatch, text):
    monkeypatch.setattr(record_files, "BLOCK", 5)
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    where = f"(line {expected.value.lineno}, column {expected.value.colno})"
    with pytest.raises(UserError) as got:
        list(record_files.json_list_records(str(path)))
    assert str(got.value).startswith(f"{path} is not valid JSON: ") and where in str(got.value), str(got.value)
