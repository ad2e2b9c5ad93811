"""
A mutation pass: does the test suite catch a broken invariant? Each mutation below breaks one thing the
project promises (the loss mask, the -100 loss, token-weighted accumulation, resume, weight tying, the
Conv1D transposes, DDP slicing, ...) in a scratch copy of the repository, runs the tests that should catch
it, and records whether they did. A mutation the tests let through is a hole in the suite.

    python bench/mutations.py --repo . --out mutations.json            # this checkout
    python bench/mutations.py --repo /tmp/old --version old            # an older layout (see OLD below)
    python bench/mutations.py --repo . --match LoRA                    # only the mutations named so

Each mutation names, per code layout, the exact text to find and its replacement; a mutation whose text is
not found is reported as such (it never silently passes). The copy is made once; each mutation is applied,
tested and reverted in it. ../shared must sit beside the copy for the tests that need the real data, so the
copy is made next to the repository.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

FAST = ["tests/test_model.py", "tests/test_chat_template.py", "tests/test_prepare.py", "tests/test_download.py"]
TRAIN = ["tests/test_train.py"]
BOTH_SCRIPTS = ("train_pretrain.py", "train_sft.py")

# (name, tests, {layout: [(file, find, replace), ...]}); "new" is this repository's layout, "old" the one of
# commit a7de3a0 (model.py held the Hugging Face loading and train_*.py the plumbing).
M = []


def mutation(name, tests, new, old=None):
    M.append({"name": name, "tests": tests, "new": new, "old": old if old is not None else new})


def in_both_scripts(find, replace):
    return [(s, find, replace) for s in BOTH_SCRIPTS]


# The loss mask (chat_template.py is the same in both layouts)
mutation("chatml: assistant content not a target", FAST,
         [("chat_template.py", '(m["content"], is_assistant),', '(m["content"], False),')])
mutation("chatml: <|im_end|> not a target", FAST,
         [("chat_template.py", "(im_end, is_assistant), (\"\\n\", False)]", "(im_end, False), (\"\\n\", False)]")])
mutation("chatml: the newline after <|im_end|> becomes a target", FAST,
         [("chat_template.py", "(im_end, is_assistant), (\"\\n\", False)]",
           "(im_end, is_assistant), (\"\\n\", is_assistant)]")])
mutation("alpaca: <|endoftext|> not a target", FAST,
         [("chat_template.py", '("\\n\\n### Response:\\n", False), (m["content"], True), (eot, True)]',
           '("\\n\\n### Response:\\n", False), (m["content"], True), (eot, False)]')])
mutation("llama2: system block in every turn", FAST,
         [("chat_template.py", "if system is not None and first_user else", "if system is not None else")])
mutation("special tokens parsed from data", FAST,
         [("chat_template.py", "piece_ids = [piece] if isinstance(piece, int) else enc.encode_ordinary(piece)",
           "piece_ids = [piece] if isinstance(piece, int) else enc.encode(piece, allowed_special='all')")])
# The -100 loss
mutation("loss averaged over every position, masked ones included", FAST,
         [("model.py", "return loss_sum / has_target.sum().clamp(min=1)", "return loss_sum / targets.numel()")],
         [("model.py", "return loss_sum / n_targets.clamp(min=1)",
           "return loss_sum / max(targets.numel(), 1)")])
mutation("all-masked batch gives NaN (no guard)", FAST + TRAIN,
         [("model.py", "return loss_sum / has_target.sum().clamp(min=1)", "return loss_sum / has_target.sum()")],
         [("model.py", "return loss_sum / n_targets.clamp(min=1)", "return loss_sum / n_targets")])
mutation("loss gradient off (softmax - one_hot broken)", FAST,
         [("model.py", "t_chunk] -= 1.0", "t_chunk] -= 0.5")],
         [("model.py", "ignore_index=IGNORE_INDEX, reduction=\"sum\")",
           "ignore_index=IGNORE_INDEX, reduction=\"sum\", label_smoothing=0.1)")])
# Token-weighted accumulation, DDP
mutation("accumulation: naive mean of micro-batch means", TRAIN,
         in_both_scripts("loss = loss * (Y != -100).sum() * proc.world_size / n_step_targets.clamp(min=1)",
                         "loss = loss / gradient_accumulation_steps"),
         in_both_scripts("loss = loss * (Y != -100).sum() * ddp_world_size / n_step_targets.clamp(min=1)",
                         "loss = loss / gradient_accumulation_steps"))
mutation("accumulation: DDP's averaging over processes not undone", TRAIN,
         in_both_scripts("loss = loss * (Y != -100).sum() * proc.world_size / n_step_targets.clamp(min=1)",
                         "loss = loss * (Y != -100).sum() / n_step_targets.clamp(min=1)"),
         in_both_scripts("loss = loss * (Y != -100).sum() * ddp_world_size / n_step_targets.clamp(min=1)",
                         "loss = loss * (Y != -100).sum() / n_step_targets.clamp(min=1)"))
mutation("DDP: every SFT process takes the same slice", TRAIN,
         [("train_sft.py", "start = (n * proc.world_size + proc.rank) * batch_size",
           "start = (n * proc.world_size + 0) * batch_size")],
         [("train_sft.py", "start = (n * ddp_world_size + ddp_rank) * batch_size",
           "start = (n * ddp_world_size + 0) * batch_size")])
mutation("DDP: every pretraining process draws the same windows", TRAIN,
         [("train_pretrain.py", "rng = np.random.default_rng((seed, proc.rank, data_state[split]))",
           "rng = np.random.default_rng((seed, 0, data_state[split]))")],
         [("train_pretrain.py", "rng = np.random.default_rng((seed, ddp_rank, data_state[split]))",
           "rng = np.random.default_rng((seed, 0, data_state[split]))")])
# The SFT batch
mutation("SFT targets not shifted by one", TRAIN,
         [("train_sft.py", 'np.where(d["mask"][a + 1 : b] == 1, d["ids"][a + 1 : b]',
           'np.where(d["mask"][a : b - 1] == 1, d["ids"][a + 1 : b]')],
         [("train_sft.py", "np.where(loss_mask[a + 1 : b] == 1, ids[a + 1 : b]",
           "np.where(loss_mask[a : b - 1] == 1, ids[a + 1 : b]")])
mutation("SFT prompt tokens become targets (the loader ignores the mask)", TRAIN,
         [("train_sft.py", 'np.where(d["mask"][a + 1 : b] == 1,', 'np.where(d["mask"][a + 1 : b] >= 0,')],
         [("train_sft.py", "np.where(loss_mask[a + 1 : b] == 1,", "np.where(loss_mask[a + 1 : b] >= 0,")])
mutation("SFT padding is a target", TRAIN,
         [("train_sft.py", "y = np.full((len(rows), T), -100, dtype=np.int64)",
           "y = np.full((len(rows), T), meta[\"end_token\"], dtype=np.int64)")])
# Resume
mutation("resume: the data loader's position is not restored", TRAIN,
         in_both_scripts('    data_state.update(checkpoint["data_state"])\n', "    pass\n"))
mutation("resume: the optimizer state is not restored", TRAIN,
         in_both_scripts('    optimizer.load_state_dict(checkpoint["optimizer"])\n', "    pass\n"))
# Weights: tying, Conv1D, vocabulary growth
mutation("weight tying removed", FAST,
         [("model.py", "        self.lm_head.weight = self.transformer.wte.weight\n", "")])
mutation("Conv1D weights not transposed on load", FAST,
         [("hf_checkpoint.py", "            tensor = tensor.t()\n", "            tensor = tensor\n")],
         [("model.py", "            tensor = tensor.t()\n", "            tensor = tensor\n")])
mutation("Conv1D list misses mlp.c_proj (square in GPT-2: loads silently wrong)", FAST,
         [("hf_checkpoint.py", '"mlp.c_fc.weight", "mlp.c_proj.weight")', '"mlp.c_fc.weight")')],
         [("model.py", '"mlp.c_fc.weight", "mlp.c_proj.weight")', '"mlp.c_fc.weight")')])
mutation("grown vocabulary rows start at zero, not the mean", FAST,
         [("hf_checkpoint.py", "target[ckpt_vocab:].copy_(tensor.float().mean(dim=0).to(target.dtype))",
           "target[ckpt_vocab:].zero_()")],
         [("model.py", "target[ckpt_vocab:].copy_(tensor.float().mean(dim=0).to(target.dtype))",
           "target[ckpt_vocab:].zero_()")])
mutation("generation samples padded vocabulary rows", FAST,
         [("model.py", "                logits = logits[:, :vocab_size]\n", "                logits = logits\n")])

# LoRA (lora.py; the "old" layout has no LoRA: these report their text as not found there)
LORA = ["tests/test_lora.py"]
mutation("LoRA: B starts random, so training does not start at the base model", LORA,
         [("lora.py", "self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))",
           "self.lora_B = nn.Parameter(torch.randn(self.out_features, rank, **factory))")])
mutation("LoRA: update scaled by alpha, not alpha / rank", LORA,
         [("lora.py", "self.scale = alpha / rank", "self.scale = alpha")])
mutation("LoRA: merge forgets the scale", LORA,
         [("lora.py", "self.weight + (self.lora_B @ self.lora_A) * self.scale",
           "self.weight + self.lora_B @ self.lora_A")])
mutation("LoRA: the pretrained weights are not frozen", LORA,
         [("lora.py", "    for p in model.parameters():\n        p.requires_grad_(False)\n",
           "    for p in model.parameters():\n        pass\n")])
mutation("LoRA: the chat tokens' rows stay frozen (the model could never learn to stop)", LORA,
         [("lora.py", "if model.config.vocab_size > FIRST_NEW_TOKEN:", "if False:")])
mutation("LoRA: the adapted layer drops its frozen bias", LORA,
         [("lora.py", "out = F.linear(x, self.weight, self.bias)", "out = F.linear(x, self.weight)")])
mutation("LoRA: a resumed run's adapters are merged away", LORA,
         [("common.py", "return model_from_checkpoint(checkpoint, merge=False), checkpoint",
           "return model_from_checkpoint(checkpoint), checkpoint")])
mutation("loss forms a weight gradient for a frozen output layer", FAST,
         [("model.py", "needs_grad_weight = grad_enabled and ctx.needs_input_grad[1]",
           "needs_grad_weight = grad_enabled and any(ctx.needs_input_grad[:2])")])

# Stale prepared data (the "old" layout has no fingerprint: reported as not found there)
mutation("data prepared by another template rendering is trained on", ["tests/test_errors.py"],
         [("common.py", "    if found == current:\n", "    if True:\n")])
mutation("the template fingerprint ignores which pieces are targets", FAST,
         [("chat_template.py",
           "pieces = [_segments(c, template, add_generation_prompt=prompt) for c, prompt in conversations]",
           "pieces = [[p for p, _ in _segments(c, template, prompt)] for c, prompt in conversations]")])

def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def run_tests(copy, tests, timeout):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TIKTOKEN_CACHE_DIR", None)  # the copy's conftest points it at ../shared
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0
    return ("survived" if proc.returncode == 0 else "caught"), time.time() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=".")
    p.add_argument("--version", choices=["new", "old"], default="new")
    p.add_argument("--out", default="mutations.json")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--match", default="", help="only the mutations whose name contains this text (e.g. LoRA)")
    args = p.parse_args()
    repo = os.path.abspath(args.repo)
    copy = os.path.join(os.path.dirname(repo), f".mutations-{os.path.basename(repo)}-{os.getpid()}")
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git", "out", "data", "__pycache__", ".pytest_cache"))
    results = []
    try:
        for m in [m for m in M if args.match in m["name"]]:
            edits = m[args.version]
            originals, missing = {}, []
            for path, find, replace in edits:
                if not os.path.exists(os.path.join(copy, path)):  # e.g. lora.py in the old layout
                    missing.append(f"{path}: no such file")
                    continue
                current = read(os.path.join(copy, path))
                originals.setdefault(path, current)
                if find not in current:
                    missing.append(f"{path}: {find!r}")
                    continue
                write(os.path.join(copy, path), current.replace(find, replace, 1))
            if missing:
                outcome, seconds = "text not found: " + "; ".join(missing), 0.0
            else:
                outcome, seconds = run_tests(copy, m["tests"], args.timeout)
            for path, text in originals.items():
                write(os.path.join(copy, path), text)
            results.append({"mutation": m["name"], "outcome": outcome, "seconds": round(seconds, 1)})
            print(f"{outcome:>9}  {seconds:6.1f}s  {m['name']}", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    caught = sum(r["outcome"] == "caught" for r in results)
    print(f"{caught} of {len(results)} mutations caught")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
