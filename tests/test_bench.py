"""bench/bench.py --quick, run for real as a subprocess: it finishes, prints every section and writes its JSON.

A smoke test only. Timings on a shared machine say nothing, so nothing here looks at a number's size.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ALPACA_5000, HAVE_BPE, ROOT

SECTIONS = "abcdefghi"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, os.path.join("bench", "bench.py"), "--quick", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


def test_quick_exits_cleanly_and_prints_every_section(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    for key in SECTIONS:
        assert f"=== ({key}) " in proc.stdout, f"no header for section ({key})"
    assert "## Benchmarks (bench.py --quick)" in proc.stdout  # the Markdown summary


def test_quick_json_has_every_figure(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads(out.read_text())
    assert {"machine", *SECTIONS} <= results.keys()
    assert {"cpu", "cores", "torch", "date"} <= results["machine"].keys()

    a = results["a"]
    assert {"float32"} <= a["peak_flops"].keys() and len(a["shapes"]) == 2
    for shape in a["shapes"]:
        assert {"ours_fp32", "ours_auto", "auto_over_ours_fp32"} <= shape.keys()
        assert shape["ours_fp32"]["tokens_per_s"] > 0
    b = results["b"]
    assert {"ours_cached", "ours_uncached", "cached_over_uncached", "cached_equals_uncached"} <= b.keys()
    assert b["cached_equals_uncached"] is True  # not a timing: the KV cache must not change greedy tokens

    if HAVE_BPE and os.path.exists(ALPACA_5000):
        c = results["c"]
        assert {"non_pad_share", "target_share", "real_tokens"} <= c.keys()
        assert all(0 < share <= 1 for share in c["non_pad_share"].values())
        assert 0 < c["target_share"] <= 1
        assert {"real_5000"} <= results["d"].keys()
    else:
        assert "skipped" in results["c"] and "skipped" in results["d"]
    e = results["e"]
    assert {"float32 full", "float32 LoRA r=8", "projected GPT-2 XL"} <= e.keys()
    assert e["float32 LoRA r=8"]["trainable"] < e["float32 full"]["trainable"]  # counts, not timings
    assert e["float32 LoRA r=8"]["adamw_mib"] < e["float32 full"]["adamw_mib"]
    xl = e["projected GPT-2 XL"]
    assert 1.5e9 < xl["params"] < 1.6e9 and xl["lora_bytes"] < xl["full_bytes"] / 3
    assert {"default", "foreach", "fused"} <= results["f"].keys()
    assert "tuned_over_default" in results["g"] or "skipped" in results["g"]
    assert "tokens_per_s" in results["h"] or "skipped" in results["h"]
    assert {"prepare", "floor", "prepare_over_floor"} <= results["i"].keys() or "skipped" in results["i"]
