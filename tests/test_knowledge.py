"""experiments/knowledge.py end to end.

In CI (--quick: the full world and recipe, but only the base and control models and their SFTs, one-wording and
diverse, about 9 minutes on a 2-core CPU without native bf16): the pipeline runs through the real trainers,
writes its results, and both halves of the lesson show. The format: the SFT models end their answers with
<|im_end|>, the base model asked in the chat template does not. The knowledge: the SFT model answers questions
about held-out entities far better than the control (the same SFT on a base that never read those entities) and
than the base model in chat form. No smaller world or model that learns its facts in about 90 s was found:
dev/LOG.md has the measurements.
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
    for key in ("base_completion", "base_chat", "sft_chat", "control_chat", "ablation_chat", "chance",
                "sft_end_rate", "data_curve", "wall_s", "sft_ckpt", "base_ckpt", "heldout_qa"):
        assert key in r
    assert os.path.exists(os.path.join(r["sft_ckpt"], "ckpt.pt"))
    assert os.path.exists(os.path.join(r["base_ckpt"], "ckpt.pt"))
    heldout = json.loads(open(r["heldout_qa"]).read())
    assert any(q["instruction"] == "What is the capital of France?" for q in heldout)
    assert len(list((out / "answers").glob("*.jsonl"))) >= 13  # with the diverse SFT, its control, unseen wordings
    for name in ("sft_chat_unseen", "sft_diverse_chat", "sft_diverse_chat_unseen", "control_diverse_chat_unseen"):
        assert 0 <= r[name] <= 1 and name in r["answer_forms"]
    assert (out / "results.md").exists() and (out / "results.png").stat().st_size > 0


def test_sft_teaches_the_format(quick):
    r, _ = quick
    assert r["sft_end_rate"] >= 0.9  # answers end with <|im_end|>
    assert r["end_rates"]["control_chat"] >= 0.9  # the control learned the same format
    assert r["end_rates"]["base_chat"] <= 0.1  # the base model never learned <|im_end|>


def test_knowledge_comes_from_pretraining_not_from_sft(quick):
    r, _ = quick
    assert r["base_completion"] >= 0.8  # the base model knows the held-out facts
    assert r["sft_chat"] >= r["control_chat"] + 0.4  # SFT made them answerable...
    assert r["sft_chat"] >= r["base_chat"] + 0.4
    assert r["control_chat"] <= r["chance"] + 0.1  # ...but could not teach them to a model that never read them


@pytest.mark.skipif(not os.environ.get("NANOSFT_FULL_KNOWLEDGE"), reason="the full experiment takes 15+ minutes; "
                    "set NANOSFT_FULL_KNOWLEDGE=1 to run it")
def test_full_experiment_meets_its_targets(tmp_path):
    r = run_experiment(tmp_path)
    assert r["base_completion"] >= 0.9
    assert r["base_chat"] <= 0.1 and r["end_rates"]["base_chat"] <= 0.1
    assert r["sft_chat"] >= 0.8 and r["sft_end_rate"] >= 0.95
    assert r["control_chat"] <= r["chance"] + 0.05
