"""
A mutation pass: does the test suite catch a broken invariant? Each mutation below breaks one thing the
project promises (the loss mask, the -100 loss, token-weighted accumulation, resume, weight tying, the
Conv1D transposes, DDP slicing, packing and the document mask, ...) in a scratch copy of the repository,
runs the tests that should catch it, and records whether they did. A mutation the tests let through is a
hole in the suite.

    python bench/mutations.py --repo . --out mutations.json            # this checkout
    python bench/mutations.py --repo . --match LoRA                    # only the mutations named so

Each mutation names the exact text to find and its replacement; a mutation whose text is not found is
reported as such (it never silently passes). The copy is made once; each mutation is applied, tested and
reverted in it. ../shared must sit beside the copy for the tests that need the real data, so the copy is
made next to the repository.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import errors  # noqa: E402

FAST = ["tests/test_model.py", "tests/test_chat_template.py", "tests/test_prepare.py", "tests/test_download.py"]
TRAIN = ["tests/test_train.py"]
PACKING = ["tests/test_packing.py"]
ERRORS = ["tests/test_errors.py"]
BOTH_SCRIPTS = ("train_pretrain.py", "train_sft.py")

M = []  # {"name", "tests", "edits": [(file, find, replace), ...]}


def mutation(name, tests, edits):
    M.append({"name": name, "tests": tests, "edits": edits})


def in_both_scripts(find, replace):
    return [(s, find, replace) for s in BOTH_SCRIPTS]


# The loss mask
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
         [("model.py", "return loss_sum / has_target.sum().clamp(min=1)", "return loss_sum / targets.numel()")])
mutation("all-masked batch gives NaN (no guard)", FAST + TRAIN,
         [("model.py", "return loss_sum / has_target.sum().clamp(min=1)", "return loss_sum / has_target.sum()")])
mutation("loss gradient off (softmax - one_hot broken)", FAST,
         [("chunked_loss.py", "t_chunk] -= 1.0", "t_chunk] -= 0.5")])
mutation("the loss counts the zero rows that pad it to a multiple of 256", FAST,
         [("chunked_loss.py", "loss_sum += row_loss[: max(0, n_rows - i)].sum()", "loss_sum += row_loss.sum()")])
mutation("the compiled loss averages where the eager one sums", PACKING,
         [("model.py", 'F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")',
           'F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="mean")')])
mutation("the model's forward breaks the compiled graph (a value read on the host)", PACKING,
         [("model.py", "return None, cross_entropy(h, self.lm_head.weight, targets, fused)",
           "return None, cross_entropy(h, self.lm_head.weight, targets, fused) + 0 * float(h.sum())")])
# Token-weighted accumulation, DDP
mutation("accumulation: naive mean of micro-batch means", TRAIN,
         in_both_scripts("loss = loss * (Y != -100).sum() * runtime.world_size / n_step_targets.clamp(min=1)",
                         "loss = loss / gradient_accumulation_steps"))
mutation("accumulation: DDP's averaging over processes not undone", TRAIN,
         in_both_scripts("loss = loss * (Y != -100).sum() * runtime.world_size / n_step_targets.clamp(min=1)",
                         "loss = loss * (Y != -100).sum() / n_step_targets.clamp(min=1)"))
mutation("DDP: every SFT process takes the same slice", TRAIN,
         [("data.py", "start = (n * runtime.world_size + runtime.rank) * batch_size",
           "start = (n * runtime.world_size + 0) * batch_size")])
mutation("DDP: every pretraining process draws the same windows", TRAIN,
         [("data.py", "np.random.default_rng((seed, runtime.rank, drawn))", "np.random.default_rng((seed, 0, drawn))")])
# The packed SFT batch (data.py) and the document mask (model.py)
mutation("SFT targets not shifted by one", TRAIN + PACKING,
         [("data.py", 'next_ids = examples["ids"][source + 1].astype(np.int64)',
           'next_ids = examples["ids"][source].astype(np.int64)')])
mutation("SFT prompt tokens become targets (the loader ignores the mask)", TRAIN + PACKING,
         [("data.py", 'np.where(examples["mask"][source + 1] == 1, next_ids, -100)',
           'np.where(examples["mask"][source + 1] >= 0, next_ids, -100)')])
mutation("SFT padding is a target", TRAIN + PACKING,
         [("data.py", "y = np.full(len(row_ids) * row_len, -100, dtype=np.int64)",
           "y = np.full(len(row_ids) * row_len, pad_token, dtype=np.int64)")])
mutation("packed positions do not restart (an example sits where it is in the row)", PACKING + TRAIN,
         [("data.py", "positions[target] = position", "positions[target] = column[token_of] + position")])
mutation("attention crosses examples (no document mask)", PACKING,
         [("model.py", 'mask = document_mask(positions, flex=self.config.attention == "flex")', "mask = None")])
mutation("the document mask lets a token see the last token of the example before", PACKING,
         [("model.py", "return ((key <= query) & (key >= first))[:, None]",
           "return ((key <= query) & (key >= first - 1))[:, None]")])
mutation("flex: the FlexAttention mask leaks across examples (sees the example before)", PACKING,
         [("model.py", "return (kv_idx <= q_idx) & (q_idx - kv_idx <= positions[b, q_idx])",
           "return (kv_idx <= q_idx) & (q_idx - kv_idx <= positions[b, q_idx] + 1)")])
mutation("flex: the attention setting is ignored (always the boolean mask)", PACKING,
         [("model.py", 'mask = document_mask(positions, flex=self.config.attention == "flex")',
           "mask = document_mask(positions, flex=False)")])
mutation("flex: the trainer's attention setting never reaches the model", PACKING,
         [("train_sft.py", "model.config = replace(model.config, attention=attention, loss_path=loss_path,",
           "model.config = replace(model.config, loss_path=loss_path,")])
mutation("the fused loss averages where the chunked one sums", FAST,
         [("model.py", 'loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")',
           'loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="mean")')])
mutation("gradient checkpointing is ignored", FAST,
         [("model.py", "            if recompute:  # the backward pass runs the block again for its activations",
           "            if False:")])
mutation("packing loses an example", PACKING + TRAIN,
         [("data.py", "    for example in order:\n", "    for example in order[1:]:\n")])
mutation("packing is worst-fit (the roomiest row), not best-fit", PACKING,
         [("data.py", "room = size + fitting[0]  # the least room that still holds it",
           "room = size + fitting[-1]  # the least room that still holds it")])
mutation("every epoch the same order of rows", TRAIN,
         [("data.py", "order = np.random.default_rng((seed, epoch)).permutation(n_rows)",
           "order = np.random.default_rng(seed).permutation(n_rows)")])
mutation("the trainers differ by more than 70 lines (in the loader, where they may differ)", TRAIN,
         [("train_sft.py", "\ndef get_batch(split, i=None):\n",
           "\n# one\n# two\n# three\n# four\n# five\n# six\ndef get_batch(split, i=None):\n")])
# Resume
mutation("resume: the data loader's position is not restored", TRAIN,
         in_both_scripts('    batches_drawn.update(resumed["batches_drawn"])\n', "    pass\n"))
mutation("resume: the optimizer state is not restored", TRAIN,
         in_both_scripts('    optimizer.load_state_dict(resumed["optimizer"])\n', "    pass\n"))
mutation("resume: another data folder goes unnoticed", ERRORS,
         [("checkpoint.py", "if os.path.normpath(trained_on) != os.path.normpath(data_dir):", "if False:")])
mutation("resume: another trainer goes unnoticed", ERRORS,
         [("checkpoint.py", 'if checkpoint["script"] != script:', "if False:")])
# Weights: tying, Conv1D, vocabulary growth
mutation("weight tying removed", FAST,
         [("model.py", "        self.lm_head.weight = self.transformer.wte.weight\n", "")])
mutation("Conv1D weights not transposed on load", FAST,
         [("hf_checkpoint.py", "            tensor = tensor.t()\n", "            tensor = tensor\n")])
mutation("Conv1D list misses mlp.c_proj (square in GPT-2: loads silently wrong)", FAST,
         [("hf_checkpoint.py", '"mlp.c_fc.weight", "mlp.c_proj.weight")', '"mlp.c_fc.weight")')])
mutation("grown vocabulary rows start at zero, not the mean", FAST,
         [("hf_checkpoint.py", "target[ckpt_vocab:].copy_(tensor.float().mean(dim=0).to(target.dtype))",
           "target[ckpt_vocab:].zero_()")])
mutation("generation samples padded vocabulary rows", FAST,
         [("model.py", "                logits = logits[:, :vocab_size]\n", "                logits = logits\n")])

# A run's life: stops, lineage, fresh files (tests/test_run_life.py)
LIFE = ["tests/test_run_life.py"]
STOPPED = "    if stop.received and iter_num < max_iters:  # the step reached, saved: resume goes on from it\n"
mutation("a SIGTERM stop saves nothing", LIFE,
         in_both_scripts(STOPPED + '        save_checkpoint("ckpt.pt")\n', STOPPED + "        pass\n"))
mutation("a resumed run forgets the model it began from", LIFE,
         in_both_scripts('    tokens_before, base_model = resumed["tokens"], resumed["base_model"]',
                         '    tokens_before = resumed["tokens"]'))
mutation("a new run appends to the metrics of the run before", LIFE,
         [("metrics.py", '            open(self.path, "w").close()', "            pass")])
mutation("an evaluation-only run writes into the run's metrics", PACKING,
         [("metrics.py", 'self.writes = master and not config["eval_only"]', "self.writes = master")])
mutation("a new run silently replaces the run in its out_dir", LIFE,
         [("checkpoint.py", "    if found and not overwrite:", "    if False:")])
mutation("a second Ctrl-C waits for the step to end", LIFE,
         [("common.py", "            raise KeyboardInterrupt  # the second Ctrl-C: at once", "            pass")])

# The house: local paths never go to the hub, one writer of checkpoints, one chat template in two renderings
mutation("a local path is sent to the hub", ERRORS,
         [("hf_checkpoint.py", 'name.startswith(("out/", "data/", ".", "/", "~"))',
           'name.startswith((".", "/", "~"))')])
mutation("the Jinja chat template drifts from _segments (a space after ChatML's <|im_start|>)",
         ["tests/test_export.py"],
         [("chat_template.py", "  {{- '<|im_start|>' + message['role'] + ",
           "  {{- '<|im_start|> ' + message['role'] + ")])
mutation("the checkpoint writer drops a field (data_dir)", TRAIN,
         [("checkpoint.py", '"script": script, "data_dir": data_dir, "iter_num": iter_num,',
           '"script": script, "iter_num": iter_num,')])
mutation("a failed download of the default data leaves an empty data folder", TRAIN,
         [("download.py", '    partial = path + ".incomplete"\n',
           '    partial = path + ".incomplete"\n'
           '    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)\n')])
mutation("a failed prepare on demand says so twice", TRAIN,
         [("data.py", "said_why = child.returncode == 2", "said_why = False")])
mutation("a resume with nothing left to train ends silently", ERRORS,
         [("checkpoint.py", 'if checkpoint["iter_num"] >= config["max_iters"] and not config["eval_only"]:',
           "if False:")])

# LoRA
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
         [("checkpoint.py", "return model_from_checkpoint(checkpoint, merge=False), checkpoint, source",
           "return model_from_checkpoint(checkpoint), checkpoint, source")])
mutation("loss forms a weight gradient for a frozen output layer", FAST,
         [("chunked_loss.py", "needs_grad_weight = grad_enabled and ctx.needs_input_grad[1]",
           "needs_grad_weight = grad_enabled and any(ctx.needs_input_grad[:2])")])

# Stale or broken prepared data, and the one way to fail
mutation("data prepared by another template rendering is trained on", ERRORS,
         [("data.py", "    if found != current:\n", "    if False:\n")])
mutation("the template fingerprint ignores which pieces are targets", FAST,
         [("chat_template.py",
           "pieces = [_segments(c, template, add_generation_prompt=prompt) for c, prompt in conversations]",
           "pieces = [[p for p, _ in _segments(c, template, prompt)] for c, prompt in conversations]")])
mutation("a cut-off prepared file is read as it is", ERRORS,
         [("data.py", "    elif os.path.getsize(path) != expected_bytes:\n", "    elif False:\n")])
mutation("a user's mistake ends in a traceback", ERRORS,
         [("errors.py", "        if issubclass(kind, UserError):\n", "        if False:\n")])

# Conversation formats and mixes (records.py, record_files.py, prepare_alpaca.py)
FORMATS = ["tests/test_formats.py"]
mutation("formats: ShareGPT's gpt turns read as the user's", FORMATS,
         [("records.py", '"human": "user", "gpt": "assistant",', '"human": "user", "gpt": "user",')])
mutation("formats: turns that do not alternate are trained on", FORMATS,
         [("records.py", '        if m["role"] != expected:\n', '        if False:\n')])
mutation("formats: a turn's extra fields (a name, tool calls) dropped silently", FORMATS,
         [("records.py", "        if extra:\n", "        if False:\n")])
mutation("formats: --system_prompt replaces a record's own system message", FORMATS,
         [("records.py", "system = own if own.strip() else field if field.strip() else system_prompt",
           "system = system_prompt or (own if own.strip() else field if field.strip() else None)")])
mutation("formats: a weight above 1 repeats validation examples into train", FORMATS,
         [("prepare_alpaca.py", 'own = split_order["train"][source_of[split_order["train"]] == k]',
           "own = np.flatnonzero(source_of == k)")])
mutation("formats: a file given twice is split twice (its val examples in train)", FORMATS,
         [("record_files.py", "if seen.setdefault(os.path.realpath(f), k) != k or files.count(f) > 1:", "if False:")])
mutation("formats: ShareGPT's user and assistant names refused", FORMATS,
         [("records.py", '"user": "user", "assistant": "assistant"}}', "}}")])
mutation("formats: a Parquet null read as a value", FORMATS,
         [("record_files.py", "for field, value in row.items() if value is not None}",
           "for field, value in row.items()}")])
# Streaming prepare (tests/test_streaming.py): the bytes of 3e30864 whatever the chunking, errors in file order, memory
STREAMING = ["tests/test_streaming.py"]
mutation("streaming: examples written in file order, not split order", STREAMING,
         [("prepare_alpaca.py", 'rows = examples["rows"][indices]', 'rows = examples["rows"][np.sort(indices)]')])
mutation("streaming: a worker's chunk taken as it comes, not in file order", STREAMING,
         [("record_files.py", "        if len(pending) > 2 * workers:\n            yield pending.popleft().result()",
           "        if len(pending) > 2 * workers:\n            yield pending.pop().result()")])
mutation("streaming: a syntax error reported before the bad records the workers still hold", STREAMING,
         [("record_files.py",
           "            while pending:\n                yield pending.popleft().result()\n            raise",
           "            raise")])
mutation("streaming: each record's conversation kept until the end (memory grows with the file)", STREAMING,
         [("record_files.py", '        counts["records"] += 1\n',
           '        counts["records"] += 1\n        chat_template.__dict__.setdefault("kept", []).append(messages)\n')])

# The knowledge experiment's world (experiments/prepare_world.py)
WORLD = ["tests/test_world.py"]
mutation("world: a seed's texts drawn from the next seed's world generator", WORLD,
         [("experiments/prepare_world.py", 'rng = random.Random(f"{seed}:texts")', "rng = random.Random(seed + 1)"),
          ("experiments/prepare_world.py", 'rng = random.Random(f"{seed}:world")', "rng = random.Random(seed)")])
mutation("world: the many-wording SFT set keeps the helper's wordings that equal unseen ones", WORLD,
         [("experiments/prepare_world.py", "if w not in UNSEEN_WORDINGS]", "]")])
mutation("knowledge: --reuse takes a checkpoint trained with other settings", ["tests/test_experiment_seeds.py"],
         [("experiments/knowledge.py", "for key, value in dict(settings).items()))",
           "for key, value in dict(settings).items() if False))")])
mutation("knowledge: a seed far above the mean passes the spread target", ["tests/test_experiment_seeds.py"],
         [("experiments/knowledge_report.py",
           'spread = max(figure["max"] - figure["mean"], figure["mean"] - figure["min"])',
           'spread = figure["mean"] - figure["min"]')])
mutation("knowledge: a failing trainer's own error line is lost", ["tests/test_experiment_seeds.py"],
         [("experiments/knowledge.py", "{lines[-1] if lines else '(nothing)'}", "(nothing)")])

# The lesson (lesson.ipynb and its paired source lesson.py)
mutation("lesson: lesson.py edited, the notebook not synced", ["tests/test_lesson.py"],
         [("lesson.py", "DTYPE = \"float32\"", "DTYPE = \"auto\"")])
mutation("lesson: a module imports the notebook's source", ["tests/test_layout.py"],
         [("experiments/eval_qa.py", "import chat_template  # noqa: E402",
           "import chat_template  # noqa: E402\nimport lesson  # noqa: E402, F401")])


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
    errors.report_user_errors()
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=".")
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
            edits = m["edits"]
            originals, missing = {}, []
            for path, find, replace in edits:
                if not os.path.exists(os.path.join(copy, path)):
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
