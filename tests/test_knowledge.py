"""experiments/knowledge.py end to end.

In CI (--quick: the full world and the recipe's four runs, the base and control models and their
eighteen-wording SFTs; about 6 minutes on a 2-core CPU with native bf16): the pipeline runs through the real
trainers, writes its results, and both halves of the lesson show. The format: the SFT models end their answers
with <|im_end|>, the base model asked in the chat template does not. The knowledge: the SFT model answers
questions about held-out entities far better than the control (the same SFT on a base that never read those
entities) and than the base model in chat form. No smaller world or model that learns its facts in about 90 s
was found: dev/LOG.md has the measurements.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, needs_bpe

pytestmark = [needs_bpe, pytest.mark.slow]  # minutes of CPU: `python -m pytest -m slow` (CI runs it)


def run_experiment(out, *args):
    result = subprocess.run([sys.executable, "experiments/knowledge.py", f"--out_dir={out}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    print(result.stdout[-3000:])
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("knowledge")
    return run_experiment(out, "--quick"), out


def test_results_files(quick):
    r, out = quick
    for key in ("base_completion", "base_chat", "sft_many_chat", "control_many_chat", "sft_many_chat_unseen",
                "control_many_chat_unseen", "chance", "targets", "wall_s", "france"):
        assert key in r
    for name in ("base", "control_base", "sft_many", "control_sft_many"):
        assert (out / name / "ckpt.pt").exists()
    heldout = json.loads((out / "world" / "heldout_qa.json").read_text())
    assert any(q["instruction"] == "What is the capital of France?" for q in heldout)
    assert len(list((out / "answers").glob("*.jsonl"))) == 9  # base: 2 forms x 2 entity sets; SFTs: 2 x 2; 1
    assert "sft_chat" not in r and r["data_curve"] == []  # --quick leaves out the comparisons
    assert [t["target"] for t in r["targets"]][:2] == ["trained wording >= 80%", "unseen wordings >= 70%"]
    assert (out / "results.md").exists() and (out / "results.png").stat().st_size > 0


def test_sft_teaches_the_format(quick):
    r, _ = quick
    assert r["end_rates"]["sft_many_chat"] >= 0.9  # answers end with <|im_end|>
    assert r["end_rates"]["control_many_chat"] >= 0.9  # the control learned the same format
    assert r["end_rates"]["base_chat"] <= 0.1  # the base model never learned <|im_end|>


def test_knowledge_comes_from_pretraining_not_from_sft(quick):
    r, _ = quick
    assert r["base_completion"] >= 0.8  # the base model knows the held-out facts
    assert r["sft_many_chat"] >= r["control_many_chat"] + 0.4  # SFT made them answerable...
    assert r["sft_many_chat"] >= r["base_chat"] + 0.4
    assert r["control_many_chat"] <= r["chance"] + 0.1  # ...but could not teach them to a model that never read them


@pytest.mark.skipif(not os.environ.get("NANOSFT_FULL_KNOWLEDGE"), reason="the full experiment takes 30+ minutes; "
                    "set NANOSFT_FULL_KNOWLEDGE=1 to run it")
def test_full_experiment_meets_its_targets(tmp_path):
    r = run_experiment(tmp_path)
    assert r["base_completion"] >= 0.9
    assert [t["target"] for t in r["targets"] if not t["met"]] == []
