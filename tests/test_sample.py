"""sample.py on tiny checkpoints trained here by the real scripts: a base model and an SFT model that memorised
one answer, so "stops at <|im_end|>" is something the model learned, not something the test arranged."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, needs_bpe

pytestmark = needs_bpe

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--dtype=float32", "--device=cpu",
        "--eval_iters=2", "--log_interval=10", "--warmup_iters=5", "--weight_decay=0.0"]
ANSWER = "Hello there, friend!"


def run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=300, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import prepare_alpaca
    import prepare_text

    d = tmp_path_factory.mktemp("sample")
    (d / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 400)
    prepare_text.prepare(input_path=str(d / "text.txt"), out_dir=str(d / "text"))
    records = [{"instruction": f"Say hello number {i}.", "input": "", "output": ANSWER} for i in range(24)]
    (d / "sft.json").write_text(json.dumps(records))
    prepare_alpaca.prepare(inputs=[str(d / "sft.json")], out_dir=str(d / "sft_data"), val_size=4)
    run(["train_pretrain.py", *TINY, f"--data_dir={d / 'text'}", f"--out_dir={d / 'base'}", "--max_iters=5",
         "--batch_size=4", "--eval_interval=100"])
    run(["train_sft.py", *TINY, f"--data_dir={d / 'sft_data'}", f"--out_dir={d / 'sft'}",
         f"--init_from={d / 'base'}", "--max_iters=150", "--batch_size=2", "--learning_rate=3e-3",
         "--eval_interval=1000"])
    return d


def sample(ckpts, *args, **kw):
    return run(["sample.py", f"--ckpt={ckpts / 'sft'}", "--device=cpu", "--temperature=0",
                "--max_new_tokens=40", *args], **kw)


def test_sft_model_answers_and_stops_at_im_end(ckpts):
    out = sample(ckpts, "--prompt", "Say hello number 3.", "--out", str(ckpts / "one.jsonl"))
    assert ANSWER in out
    assert "[no end token" not in out
    (record,) = [json.loads(line) for line in (ckpts / "one.jsonl").read_text().splitlines()]
    assert record["response"] == ANSWER  # only the response: no template text, no end token
    assert record["stopped"] is True and record["n_tokens"] < 40
    assert record["template"] == "chatml"  # from the checkpoint, no flag given


def test_compare_prints_both_labelled_blocks_and_eval_text_reports_both(ckpts):
    out = sample(ckpts, "--compare", "--prompt", "Say hello number 5.",
                 f"--eval_text={ckpts / 'text' / 'val.bin'}")
    base_at, tuned_at = out.index(f"--- base ({ckpts / 'base'})"), out.index(f"--- fine-tuned ({ckpts / 'sft'})")
    assert base_at < tuned_at
    assert ANSWER in out[tuned_at:] and ANSWER not in out[base_at:tuned_at]
    assert out.count("[no end token") == 1  # the base model never learned <|im_end|>
    assert f"base ({ckpts / 'base'}):" in out and f"fine-tuned ({ckpts / 'sft'}):" in out
    assert "fine-tuning changed this loss by" in out


def test_template_override_and_out_jsonl(ckpts):
    out_file = ckpts / "override.jsonl"
    sample(ckpts, "--template=none", "--prompt", "The quick brown", "--num_samples=2", "--temperature=0.8",
           "--out", str(out_file))
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 2 and all(r["template"] == "none" for r in records)
    assert {"prompt", "model", "settings", "response", "stopped"} <= records[0].keys()
    assert records[0]["settings"]["temperature"] == 0.8


def test_prompts_file_json_list_of_alpaca_records(ckpts):
    prompts = ckpts / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": "Say hello number 1.", "input": ""}, "Say hello number 2."]))
    out = sample(ckpts, f"--prompts_file={prompts}")
    assert out.count("=== prompt") == 2 and out.count(ANSWER) == 2


def test_chat_two_turns_from_stdin(ckpts):
    out = sample(ckpts, "--chat", input="Say hello number 1.\nSay hello number 2.\n")
    assert out.count("assistant: ") == 2
    assert out.count(ANSWER) == 2
