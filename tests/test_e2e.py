"""The no-GPU path end to end on the real shared data, scaled down to fit CI:
pretrain a tiny GPT on Tiny Shakespeare, SFT it on real Alpaca records, then ask both models 20 held-out
instructions. The SFT model must have learned to end its answers with <|im_end|>; the base model never saw
that token as a target, so it must (essentially) never emit it."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ALPACA_5000, ROOT, SHAKESPEARE, needs_alpaca, needs_shakespeare

from data import read_prompts

pytestmark = [needs_alpaca, needs_shakespeare, pytest.mark.slow]  # ~4 minutes of CPU: `pytest -m slow`

SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=128", "--batch_size=8", "--eval_iters=4",
         "--warmup_iters=20", "--log_interval=25", "--device=cpu"]


def run(args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def evals(out_dir):
    lines = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return [r for r in lines if "val_loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import prepare_alpaca
    import prepare_text

    d = tmp_path_factory.mktemp("e2e")
    prepare_text.prepare(input_path=SHAKESPEARE, out_dir=str(d / "shakespeare"))
    prepare_alpaca.prepare(inputs=[ALPACA_5000], out_dir=str(d / "alpaca"))
    run(["train_pretrain.py", "configs/tiny_shakespeare.py", *SMALL, f"--data_dir={d / 'shakespeare'}",
         f"--out_dir={d / 'pre'}", "--max_iters=200", "--eval_interval=100"])
    run(["train_sft.py", "configs/tiny_alpaca.py", *SMALL, f"--data_dir={d / 'alpaca'}", f"--out_dir={d / 'sft'}",
         f"--init_from={d / 'pre'}", "--max_iters=200", "--eval_interval=100"])
    return d


def test_pretraining_learns_shakespeare(runs):
    first, *_, last = evals(runs / "pre")
    assert first["iter"] == 0 and abs(first["val_loss"] - math.log(50304)) < 0.3  # untrained: uniform guess
    assert last["iter"] == 200 and last["val_loss"] < 0.65 * math.log(50304)  # well below ln(vocab)


def test_sft_val_loss_falls(runs):
    first, *_, last = evals(runs / "sft")
    assert last["val_loss"] < first["val_loss"] - 1.0


def test_sft_model_learns_to_stop_and_base_model_does_not(runs):
    prompts = runs / "held_out.json"
    prompts.write_text(json.dumps(read_prompts(str(runs / "alpaca"))[:20]))
    out = runs / "samples.jsonl"
    run(["sample.py", f"--ckpt={runs / 'sft'}", "--compare", f"--prompts_file={prompts}", f"--out={out}",
         "--max_new_tokens=64", "--device=cpu"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    base = [r for r in records if r["model"].startswith("base")]
    tuned = [r for r in records if r["model"].startswith("fine-tuned")]
    assert len(base) == len(tuned) == 20
    tuned_stops = sum(r["stopped"] for r in tuned)
    base_stops = sum(r["stopped"] for r in base)
    print(f"ended with <|im_end|>: fine-tuned {tuned_stops}/20, base {base_stops}/20")
    assert tuned_stops >= 16  # at least 80%
    assert base_stops <= 2  # "essentially never": it may end a text with <|endoftext|>, never learned <|im_end|>
