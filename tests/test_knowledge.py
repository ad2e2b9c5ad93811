"""experiments/knowledge.py end to end, scaled down to fit CI (--quick): a small world, a base model pretrained on
it, the same base without the held-out entities (the control), SFT of both. The direction of the lesson must
show with a margin: the SFT model answers held-out questions well above the control (which never saw their
facts) and above the base model asked in the chat template (which never learned the format)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, needs_bpe

pytestmark = needs_bpe


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("knowledge")
    result = subprocess.run([sys.executable, "experiments/knowledge.py", "--quick", f"--out_dir={out}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    print(result.stdout[-2000:])
    return json.loads((out / "results.json").read_text()), out


def test_sft_answers_held_out_questions_only_when_pretraining_taught_the_facts(results):
    r, _ = results
    print({k: r[k] for k in ("base_completion", "base_chat", "sft_chat", "control_chat", "chance")})
    assert r["sft_chat"] >= r["control_chat"] + 0.25
    assert r["sft_chat"] >= r["base_chat"] + 0.25
    assert r["sft_end_rate"] >= 0.8  # SFT taught the format: answers end with <|im_end|>
    assert r["end_rates"]["base_chat"] <= 0.1  # the base model never learned <|im_end|>


def test_results_files(results):
    r, out = results
    for key in ("base_completion", "base_chat", "sft_chat", "control_chat", "ablation_chat", "chance",
                "sft_end_rate", "data_curve", "wall_s", "sft_ckpt", "base_ckpt", "heldout_qa"):
        assert key in r
    assert os.path.exists(os.path.join(r["sft_ckpt"], "ckpt.pt"))
    assert os.path.exists(os.path.join(r["base_ckpt"], "ckpt.pt"))
    heldout = json.loads(open(r["heldout_qa"]).read())
    assert any(q["instruction"] == "What is the capital of France?" for q in heldout)
    assert (out / "results.md").exists() and (out / "results.png").stat().st_size > 0
