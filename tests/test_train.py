"""train_pretrain.py and train_sft.py, run for real as subprocesses on tiny models and tiny synthetic data.

What is checked: the two scripts differ only in their docstring and data-loader section; gradient
accumulation weights micro-batches by their target tokens (through the script and in-process); resuming
reproduces an uninterrupted run step for step; torchrun (2 CPU processes, gloo) matches one process; config
mistakes stop the run with a clear message; checkpoints are atomic and can seed a new run; a failed data
preparation exits cleanly; both data loaders give exactly the expected batches on small hand-written data.
Every run is a few steps of a 2-layer, 32-wide GPT, and independent runs go two at a time (OMP_NUM_THREADS=1
each), so the whole file takes well under a minute and a half on 2 cores.
"""

import ast
import difflib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import ROOT, needs_bpe, run_script

import chat_template
import checkpoint
import data
from configurator import load_config
from errors import UserError
from model import GPT, GPTConfig

SCRIPTS = ("train_pretrain.py", "train_sft.py")
SEED = 1337
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50304, dropout=0.0, bias=True)
TINY = [
    "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--vocab_size=50304", "--batch_size=4",
    "--eval_iters=2", "--eval_interval=1000", "--log_interval=1", "--dtype=float32", "--device=cpu",
    "--init_from=scratch", f"--seed={SEED}",
]
IGNORE = -100


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------
# helpers: running the scripts, reading what they write


def script_env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RANK", None)  # never let a stray DDP environment leak into a single-process run
    return env


def run(script, *args, torchrun=False, check=True, env=None, base=True):
    """Run one training script (cwd = repo root) with the tiny settings plus args; later args win."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    cmd = [*launcher, script, *(TINY if base else []), *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env or script_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                    f"--- stderr\n{proc.stderr[-5000:]}")
    return proc


def run_parallel(*jobs):
    """jobs: (args, kwargs) for run(); two at a time, one per core."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run, *args, **kwargs) for args, kwargs in jobs]
        return [f.result() for f in futures]


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def step_losses(out_dir):
    """{iter: loss} of the training-step lines (the last line wins if a resumed run repeats an iter)."""
    return {r["iter"]: r["loss"] for r in metrics(out_dir) if "loss" in r}


def evals(out_dir):
    return [r for r in metrics(out_dir) if "val_loss" in r]


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def rel_err(a: dict, b: dict) -> float:
    """Norm-wise relative error ||a - b|| / ||b|| over all tensors of two same-keyed dicts."""
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return math.sqrt(num / den)


def exp_avg_by_name(ckpt) -> dict:
    """The optimizer's exp_avg of each parameter, keyed by parameter name (configure_optimizer's order)."""
    model = GPT(GPTConfig(**ckpt["model_args"]))
    named = list(model.named_parameters())
    names = [n for n, p in named if p.dim() >= 2] + [n for n, p in named if p.dim() < 2]
    ids = [i for group in ckpt["optimizer"]["param_groups"] for i in group["params"]]
    assert len(ids) == len(names)
    return {name: ckpt["optimizer"]["state"][i]["exp_avg"] for i, name in zip(ids, names, strict=True)}


def process(rank: int = 0, world_size: int = 1):
    """What data.py's batch functions read of a runtime: which process this is, of how many."""
    return types.SimpleNamespace(rank=rank, world_size=world_size)


class SFTBatches:
    """The batches train_sft.py's get_batch draws from a prepared folder, made by the data.py functions its
    DATA LOADER section calls (read_examples, pack, epoch_rows, spread, packed_batch), in-process."""

    def __init__(self, data_dir, batch_size, block_size=64, gradient_accumulation_steps=1, world_size=1, rank=0,
                 seed=SEED, eval_iters=2):
        self.meta = data.read_meta(data_dir)
        self.examples = {s: data.read_examples(data_dir, self.meta, s, block_size) for s in ("train", "val")}
        self.packed = {s: data.pack(self.examples[s], block_size, seed) for s in ("train", "val")}
        self.n_rows = {s: len(self.packed[s]["starts"]) - 1 for s in ("train", "val")}
        self.batch_size, self.block_size, self.seed, self.eval_iters = batch_size, block_size, seed, eval_iters
        self.accum, self.runtime = gradient_accumulation_steps, process(rank, world_size)
        self.steps_per_epoch = self.n_rows["train"] // (batch_size * gradient_accumulation_steps * world_size)
        self.drawn = 0

    def train(self):
        """The next training micro-batch of this process."""
        rows = data.epoch_rows(self.n_rows["train"], self.drawn, self.batch_size, self.steps_per_epoch * self.accum,
                               self.seed, self.runtime)
        self.drawn += 1
        return self.batch("train", rows)

    def eval(self, split, i):
        return self.batch(split, data.spread(self.n_rows[split], i, self.batch_size, self.eval_iters))

    def batch(self, split, rows):
        arrays = data.packed_batch(self.examples[split], self.packed[split], rows, self.block_size,
                                   self.meta["end_token"])
        return tuple(torch.from_numpy(a) for a in arrays)


def example_keys(X, Y, P) -> list[tuple]:
    """Each example's input tokens, cut out of its packed row where its positions restart at 0 (padding
    has no targets and is left out), to recognise an example whatever row it is packed in."""
    keys = []
    for x, y, p in zip(X.tolist(), Y.tolist(), P.tolist(), strict=True):
        starts = [i for i, pos in enumerate(p) if pos == 0] + [len(p)]
        keys += [tuple(x[a:b]) for a, b in itertools.pairwise(starts) if any(t != IGNORE for t in y[a:b])]
    return keys


def grads_of(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def naive_grads(model, batches) -> dict:
    """The naive scheme the scripts must not use: the mean of per-micro-batch mean losses."""
    model.zero_grad(set_to_none=True)
    for X, Y, P in batches:
        _, loss = model(X, Y, P)
        (loss / len(batches)).backward()
    return grads_of(model)


def full_batch_grads(model, X, Y, P) -> dict:
    model.zero_grad(set_to_none=True)
    _, loss = model(X, Y, P)
    loss.backward()
    return grads_of(model)


# ----------------------------------------------------------------------------------------------------------
# tiny synthetic data, prepared once per module

WORDS = "apple river stone cloud bright seven quick green table music".split()


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """40 alpaca-style records (32 train, 8 val) of similar total length (one to a row of 64) but very
    different output lengths, short or long: the micro-batches of a step then hold unequal numbers of
    targets."""
    import prepare_alpaca

    tmp = tmp_path_factory.mktemp("sft_data")
    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        n_out = int(rng.integers(1, 4)) if rng.random() < 0.5 else int(rng.integers(24, 30))
        n_in = 30 - n_out + int(rng.integers(0, 4))
        records.append({
            "instruction": f"Task {i}: " + " ".join(WORDS[(i + j) % 10] for j in range(n_in)),
            "input": "" if i % 3 else "some extra input",
            "output": " ".join(WORDS[(3 * i + j) % 10] for j in range(n_out)),
        })
    path = tmp / "records.json"
    path.write_text(json.dumps(records))
    out = tmp / "prepared"
    meta = prepare_alpaca.prepare(inputs=[str(path)], out_dir=str(out), val_size=8)
    assert (meta["n_train"], meta["n_val"]) == (32, 8)
    lengths = np.diff(np.fromfile(out / "train_offsets.bin", dtype=np.int64))
    assert lengths.max() - 1 <= MODEL["block_size"], "every example must fit the tiny block_size"
    return str(out)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    import prepare_text

    tmp = tmp_path_factory.mktemp("text_data")
    text = "\n".join(" ".join(WORDS[(7 * i + j) % 10] for j in range(i % 13 + 3)) for i in range(600))
    (tmp / "input.txt").write_text(text)
    prepare_text.prepare(input_path=str(tmp / "input.txt"), out_dir=str(tmp / "prepared"))
    return str(tmp / "prepared")


# ----------------------------------------------------------------------------------------------------------
# 1. the two scripts differ only in the docstring and the data loader


def allowed_regions(text: str, name: str) -> list[range]:
    """0-based line ranges that may differ: the module docstring and the DATA LOADER section (both inclusive)."""
    lines = text.splitlines()
    tree = ast.parse(text)
    doc = tree.body[0] if tree.body else None
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str), \
        f"{name}: no module docstring"
    assert lines[doc.lineno - 1].startswith('"""'), f"{name}: the module docstring is not a triple-quoted string"
    starts = [i for i, line in enumerate(lines) if line.startswith("# DATA LOADER:")]
    ends = [i for i, line in enumerate(lines) if line == "# END OF DATA LOADER"]
    assert len(starts) == 1, f"{name}: {len(starts)} lines start with '# DATA LOADER:', expected exactly 1"
    assert len(ends) == 1, f"{name}: {len(ends)} lines are '# END OF DATA LOADER', expected exactly 1"
    assert starts[0] < ends[0], f"{name}: '# END OF DATA LOADER' comes before '# DATA LOADER:'"
    return [range(doc.lineno - 1, doc.end_lineno), range(starts[0], ends[0] + 1)]


def outside(text: str, regions: list[range]) -> list[str]:
    """The lines outside the regions, each region collapsed to one placeholder line."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        region = next((r for r in regions if i in r), None)
        if region is None:
            out.append(lines[i])
            i += 1
        else:
            out.append(f"<region {regions.index(region)}>")
            i = region.stop
    return out


def check_diff_shape(a_text: str, b_text: str, a_name="train_pretrain.py", b_name="train_sft.py"):
    """(violations, n_changed): every line the diff changes must lie in an allowed region. autojunk=False:
    difflib's default treats frequent lines (blank ones) as junk and reports a much longer diff; even so its
    count can differ from `diff`'s by a line or two, so the test counts with both."""
    a_regions, b_regions = allowed_regions(a_text, a_name), allowed_regions(b_text, b_name)
    a_lines, b_lines = a_text.splitlines(), b_text.splitlines()
    violations, n_changed = [], 0
    matcher = difflib.SequenceMatcher(None, a_lines, b_lines, autojunk=False)
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if tag == "equal":
            continue
        n_changed += (a_end - a_start) + (b_end - b_start)
        violations += [f"{a_name}:{i + 1}: -{a_lines[i]}" for i in range(a_start, a_end)
                       if not any(i in r for r in a_regions)]
        violations += [f"{b_name}:{i + 1}: +{b_lines[i]}" for i in range(b_start, b_end)
                       if not any(i in r for r in b_regions)]
    if outside(a_text, a_regions) != outside(b_text, b_regions):
        violations.append("the text outside the docstring and the DATA LOADER section is not identical")
    return violations, n_changed


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_scripts_differ_only_in_docstring_and_data_loader():
    violations, n_changed = check_diff_shape(read("train_pretrain.py"), read("train_sft.py"))
    assert not violations, "changed lines outside the allowed regions:\n" + "\n".join(violations)
    # The bound is the project's (70 lines), deliberately without slack: a longer loader is a design change
    assert 0 < n_changed <= 70, f"{n_changed} changed lines; the trainers may differ by 70 at most"
    if shutil.which("diff"):  # the command the README gives learners counts a little differently
        shown = subprocess.run(["diff", "train_pretrain.py", "train_sft.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.splitlines()
        n_shown = sum(line.startswith(("<", ">")) for line in shown)
        assert 0 < n_shown <= 70, f"`diff train_pretrain.py train_sft.py` shows {n_shown} changed lines"
    print(f"train_pretrain.py vs train_sft.py: {n_changed} changed lines, all in the docstring or the loader")


def test_diff_shape_check_has_teeth():
    pre, sft = read("train_pretrain.py"), read("train_sft.py")
    # A change inside SFT's loader is fine; one in the loop, an inserted line, or a lost marker is not.
    inside = sft.replace('        batches_drawn[split] += 1\n', '        batches_drawn[split] += 1  # counted\n', 1)
    assert inside != sft and check_diff_shape(pre, inside)[0] == []
    loop = sft.replace("if grad_clip > 0:", "if grad_clip >= 0:", 1)
    assert loop != sft
    violations, _ = check_diff_shape(pre, loop)
    assert any("grad_clip >= 0" in v for v in violations), violations
    inserted = sft.replace("\nlog.close()\n", "\nlog.close()\nprint('extra')\n", 1)
    violations, _ = check_diff_shape(pre, inserted)
    assert any("print('extra')" in v for v in violations), violations
    deleted = pre.replace("        scaler.update()\n", "", 1)  # a line missing from one side only
    assert deleted != pre
    violations, _ = check_diff_shape(deleted, sft)
    assert any("scaler.update()" in v for v in violations), violations
    with pytest.raises(AssertionError, match="END OF DATA LOADER"):
        check_diff_shape(pre, sft.replace("# END OF DATA LOADER\n", "", 1))
    with pytest.raises(AssertionError, match="DATA LOADER:"):
        check_diff_shape(pre.replace("# END OF DATA LOADER\n", "# END OF DATA LOADER\n# DATA LOADER: 2\n"), sft)


# ----------------------------------------------------------------------------------------------------------
# 2b. gradient accumulation in-process: the scripts' formula gives the full-batch gradient


@pytest.fixture
def masked_step_data(tmp_path):
    """Hand-written SFT data of four examples, one to a row of 64 positions: two without a single target,
    two with targets."""
    out = tmp_path / "masked"
    out.mkdir()
    train = [(list(range(1, 66)), [0] * 65), (list(range(100, 165)), [0] * 65),
             (list(range(200, 265)), [0] * 30 + [1] * 35), (list(range(300, 365)), [0] * 10 + [1] * 55)]
    write_sft_split(str(out), "train", train)
    write_sft_split(str(out), "val", train[2:])
    (out / "meta.json").write_text(json.dumps({"command": ["python", "prepare_alpaca.py", "--input", "hand"],
                                               "template": "chatml", "vocab_size": 50259, "end_token": PAD,
                                               "template_fingerprint": chat_template.fingerprint("chatml"),
                                               "n_train": len(train), "n_val": len(train[2:])}))
    return str(out)


def test_all_masked_micro_batches_give_finite_loss_and_weights(masked_step_data, tmp_path):
    """Through train_sft.py: a step whose micro-batches hold no target at all logs loss 0.0 (not NaN) and
    leaves every weight finite; the steps with targets log a positive loss. The loader's own batches (for a
    seed where such a step comes up in the first two epochs) say which steps those are."""
    for seed in range(100):
        loader = SFTBatches(masked_step_data, batch_size=1, gradient_accumulation_steps=2, seed=seed)
        masked = [all([bool((loader.train()[1] == IGNORE).all()) for _ in range(2)])  # both drawn
                  for _ in range(4)]
        if any(masked):
            break
    assert any(masked) and not all(masked), masked
    out = str(tmp_path / "out")
    run("train_sft.py", f"--data_dir={masked_step_data}", f"--out_dir={out}", "--batch_size=1",
        "--gradient_accumulation_steps=2", "--max_iters=4", "--warmup_iters=1", "--eval_iters=1", f"--seed={seed}")
    losses = step_losses(out)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values()), losses
    assert [losses[step] == 0.0 for step in (1, 2, 3, 4)] == masked, (losses, masked)
    assert all(losses[step] > 0 for step in (1, 2, 3, 4) if not masked[step - 1]), losses
    ckpt = load_ckpt(os.path.join(out, "ckpt.pt"))
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ----------------------------------------------------------------------------------------------------------
# 2a. gradient accumulation through train_sft.py: 4 micro-batches of 2 == 1 batch of 8

ONE_STEP = ["--max_iters=1", "--grad_clip=0.0", "--weight_decay=0.0", "--beta1=0.9"]


@pytest.fixture(scope="module")
def one_step_runs(sft_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grad_accum")
    full, accum = str(tmp / "full"), str(tmp / "accum")
    run_parallel(
        (("train_sft.py", *ONE_STEP, f"--data_dir={sft_data}", f"--out_dir={full}", "--batch_size=8",
          "--gradient_accumulation_steps=1"), {}),
        (("train_sft.py", *ONE_STEP, f"--data_dir={sft_data}", f"--out_dir={accum}", "--batch_size=2",
          "--gradient_accumulation_steps=4"), {}),
    )
    return full, accum


@needs_bpe
def test_sft_script_accumulation_matches_full_batch(one_step_runs, sft_data):
    full_dir, accum_dir = one_step_runs
    full, accum = (load_ckpt(os.path.join(d, "ckpt.pt")) for d in one_step_runs)
    assert full["iter_num"] == accum["iter_num"] == 1
    # AdamW's first step stores exp_avg = (1 - beta1) * grad: compare the two runs' gradients through it.
    g_full = {k: v / 0.1 for k, v in exp_avg_by_name(full).items()}
    g_accum = {k: v / 0.1 for k, v in exp_avg_by_name(accum).items()}
    err = rel_err(g_accum, g_full)
    assert err < 1e-6, f"exp_avg of 4x2 accumulation vs one batch of 8: relative error {err:.2e}"
    loss_full, loss_accum = step_losses(full_dir)[1], step_losses(accum_dir)[1]
    assert loss_accum == pytest.approx(loss_full, rel=1e-6)

    # In-process, from the same initial weights and the loader's own batches: the script's gradient is the
    # full-batch gradient, and the naive scheme would be far off on this very step (the check has teeth).
    torch.manual_seed(SEED)
    model = GPT(GPTConfig(**MODEL))
    X, Y, P = SFTBatches(sft_data, batch_size=8).train()
    ref = full_batch_grads(model, X, Y, P)
    _, ref_loss = model(X, Y, P)
    ref_err = rel_err(g_full, ref)
    assert ref_err < 1e-6, f"the script's step-0 gradient is not the full-batch gradient ({ref_err:.2e})"
    assert loss_full == pytest.approx(ref_loss.item(), rel=1e-6)
    loader = SFTBatches(sft_data, batch_size=2, gradient_accumulation_steps=4)
    micro = [loader.train() for _ in range(4)]
    assert sorted(k for batch in micro for k in example_keys(*batch)) == sorted(example_keys(X, Y, P)), \
        "both configurations should see the same examples in step 0"
    counts = [int((Y_ != IGNORE).sum()) for _, Y_, _ in micro]
    assert len(set(counts)) > 1, f"the micro-batches should hold different numbers of targets: {counts}"
    naive_err = rel_err(naive_grads(model, micro), g_accum)
    assert naive_err > 0.1, f"naive accumulation is only {naive_err:.2e} off: the test would not catch it"
    print(f"train_sft.py: targets per micro-batch {counts}; exp_avg 4x2 vs 1x8 {err:.1e}, 1x8 vs in-process "
          f"{ref_err:.1e}, loss {abs(loss_accum - loss_full) / loss_full:.1e}; naive off by {naive_err:.2f}")


# ----------------------------------------------------------------------------------------------------------
# 3. resume: k steps + resume to 2k == 2k uninterrupted, for both scripts (dropout on: the RNG is restored)

K = 3
RESUME = ["--gradient_accumulation_steps=2", "--dropout=0.1", "--learning_rate=3e-3", "--warmup_iters=2",
          f"--lr_decay_iters={2 * K}", "--min_lr=3e-4"]


@pytest.fixture(scope="module")
def resume_runs(sft_data, text_data, tmp_path_factory):
    """{script: (resumed out_dir, uninterrupted out_dir, ckpt after the first k steps)}"""
    tmp = tmp_path_factory.mktemp("resume")
    data = {"train_sft.py": sft_data, "train_pretrain.py": text_data}
    dirs = {s: (str(tmp / f"{s[:-3]}_resumed"), str(tmp / f"{s[:-3]}_straight")) for s in SCRIPTS}
    jobs = []
    for s in SCRIPTS:
        common = [*RESUME, f"--data_dir={data[s]}"]
        jobs += [((s, *common, f"--out_dir={dirs[s][0]}", f"--max_iters={K}"), {}),
                 ((s, *common, f"--out_dir={dirs[s][1]}", f"--max_iters={2 * K}"), {})]
    run_parallel(*jobs)
    first = {s: load_ckpt(os.path.join(dirs[s][0], "ckpt.pt")) for s in SCRIPTS}
    run_parallel(*[((s, *RESUME, f"--data_dir={data[s]}", f"--out_dir={dirs[s][0]}", "--init_from=resume",
                     f"--max_iters={2 * K}"), {}) for s in SCRIPTS])
    return {s: (*dirs[s], first[s]) for s in SCRIPTS}


@needs_bpe
@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_reproduces_uninterrupted_run(resume_runs, script):
    resumed, straight, first = resume_runs[script]
    assert first["iter_num"] == K
    assert first["batches_drawn"]["train"] == K * 2, "k steps of 2 micro-batches each"
    assert len(first["rng_state"]) == 1
    a, b = step_losses(resumed), step_losses(straight)
    assert sorted(a) == sorted(b) == list(range(1, 2 * K + 1))
    for it in range(1, K + 1):  # the first k steps: the same run twice
        assert a[it] == pytest.approx(b[it], rel=1e-6, abs=0)
    print(f"{script}: resumed vs uninterrupted |loss diff| per step "
          f"{[abs(a[it] - b[it]) for it in range(K + 1, 2 * K + 1)]}")
    for it in range(K + 1, 2 * K + 1):
        assert abs(a[it] - b[it]) <= 1e-6 * abs(b[it]), f"step {it}: resumed {a[it]!r} vs uninterrupted {b[it]!r}"
    lrs_a = {r["iter"]: r["lr"] for r in metrics(resumed) if "lr" in r}
    lrs_b = {r["iter"]: r["lr"] for r in metrics(straight) if "lr" in r}
    assert lrs_a == lrs_b
    # the tokens-seen count (plot.py's x axis) goes on from the checkpoint instead of starting again at 0
    tokens_a = {r["iter"]: r["tokens"] for r in metrics(resumed) if "tokens" in r}
    tokens_b = {r["iter"]: r["tokens"] for r in metrics(straight) if "tokens" in r}
    assert tokens_a == tokens_b and len(tokens_a) == 2 * K
    # the resumed run started at step k: it logged no training step twice
    assert [r["iter"] for r in metrics(resumed) if "loss" in r] == list(range(1, 2 * K + 1))

    ra, rb = load_ckpt(os.path.join(resumed, "ckpt.pt")), load_ckpt(os.path.join(straight, "ckpt.pt"))
    assert ra["iter_num"] == rb["iter_num"] == 2 * K
    assert ra["batches_drawn"] == rb["batches_drawn"] == {"train": 2 * K * 2, "val": 0}, "loader position restored"
    assert torch.equal(ra["rng_state"][0]["cpu"], rb["rng_state"][0]["cpu"]), "the dropout RNG stream continued"
    for name, tensor in rb["model"].items():
        assert torch.allclose(ra["model"][name], tensor, rtol=1e-6, atol=0), name
    assert ra["best_val_loss"] == pytest.approx(rb["best_val_loss"], rel=1e-6)
    assert evals(resumed)[-1]["val_loss"] == pytest.approx(evals(straight)[-1]["val_loss"], rel=1e-6)


@needs_bpe
def test_resume_with_dropout_depends_on_restored_rng(resume_runs):
    """Teeth for the check above: with dropout 0.1 the step losses depend on the RNG stream."""
    resumed, straight, first = resume_runs["train_sft.py"]
    assert first["config"]["dropout"] == 0.1 and first["model_args"]["dropout"] == 0.1
    ckpt = load_ckpt(os.path.join(straight, "ckpt.pt"))
    assert not torch.equal(first["rng_state"][0]["cpu"], ckpt["rng_state"][0]["cpu"]), "dropout drew no random numbers"


# ----------------------------------------------------------------------------------------------------------
# 4. torchrun: 2 CPU processes (gloo) x 4 examples == 1 process x 8 examples


@needs_bpe
@pytest.mark.parametrize("accum, lora_rank", [(1, 0), (2, 0), (1, 4)])
def test_torchrun_matches_single_process(sft_data, tmp_path, accum, lora_rank):
    """2 processes x batch 4/accum == 1 process x batch 8/accum, accum micro-batches a step (8 examples a step).
    With accum=2 gradients are synced across processes only on the last micro-batch (require_backward_grad_sync)
    and must still agree. With LoRA, DDP syncs only the adapters' gradients: the frozen weights have none.
    No clipping, and AdamW's second moments compared too: both would hide a gradient off by a uniform factor
    (a wrong process count in the average) from the weights alone."""
    args = [f"--data_dir={sft_data}", "--max_iters=3", "--learning_rate=3e-3", "--warmup_iters=1",
            f"--gradient_accumulation_steps={accum}", f"--lora_rank={lora_rank}", "--grad_clip=0.0"]
    ddp_dir, single_dir = str(tmp_path / "ddp"), str(tmp_path / "single")
    ddp, _ = run_parallel(
        (("train_sft.py", *args, f"--out_dir={ddp_dir}", f"--batch_size={4 // accum}"), {"torchrun": True}),
        (("train_sft.py", *args, f"--out_dir={single_dir}", f"--batch_size={8 // accum}"), {}),
    )
    assert "2 process(es)" in ddp.stdout
    a, b = step_losses(ddp_dir), step_losses(single_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    print(f"torchrun vs one process (accum {accum}), relative loss diff per step: "
          f"{[abs(a[i] - b[i]) / b[i] for i in a]}")
    for it in a:
        assert a[it] == pytest.approx(b[it], rel=1e-5), f"step {it}: torchrun {a[it]!r} vs one process {b[it]!r}"
    ckpt, single_ckpt = (load_ckpt(os.path.join(d, "ckpt.pt")) for d in (ddp_dir, single_dir))
    assert ckpt["iter_num"] == single_ckpt["iter_num"] == 3
    assert ckpt["batches_drawn"]["train"] == single_ckpt["batches_drawn"]["train"] == 3 * accum
    trained = [k for k in ckpt["model"] if not lora_rank or k.endswith(("lora_A", "lora_B", ".rows"))]
    err = rel_err(*({k: c["model"][k] for k in trained} for c in (ckpt, single_ckpt)))
    assert err < 1e-5, f"trained weights after 3 steps: torchrun vs one process, relative error {err:.2e}"
    for moment in ("exp_avg", "exp_avg_sq"):  # the optimizer's state lists the same parameters in the same order
        err = rel_err(*({i: s[moment] for i, s in c["optimizer"]["state"].items()} for c in (ckpt, single_ckpt)))
        assert err < 1e-5, f"AdamW {moment} after 3 steps: torchrun vs one process, relative error {err:.2e}"
    assert len(ckpt["rng_state"]) == 2, "one RNG state per process"
    assert not torch.equal(ckpt["rng_state"][0]["cpu"], ckpt["rng_state"][1]["cpu"])
    checkpoint.model_from_checkpoint(ckpt, merge=False)  # the rank-0 checkpoint is complete and loads
    assert not any(name.startswith("module.") for name in ckpt["model"])
    assert not [f for f in os.listdir(ddp_dir) if f.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------
# 5. config errors

DEFAULTS = {"out_dir": "out", "init_from": "scratch", "batch_size": 8, "max_iters": 1000, "learning_rate": 6e-4,
            "dropout": 0.0, "compile": False, "device": "auto"}


def config_error(argv, defaults=DEFAULTS) -> str:
    with pytest.raises(UserError) as e:  # a script reports it as one line and exit code 2 (test_errors.py)
        load_config(dict(defaults), argv)
    return str(e.value)


def test_config_accepts_good_values(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("import math\nbatch_size = 4\nlearning_rate = 1\nout_dir = 'out/x'\n_private = 3\n")
    config = load_config(dict(DEFAULTS), [str(path), "--batch_size=2", "--init_from=gpt2-medium",
                                           "--out_dir=/tmp/a-b/c", "--compile=True", "--dropout=0"])
    assert config == {**DEFAULTS, "batch_size": 2, "learning_rate": 1.0, "out_dir": "/tmp/a-b/c",
                      "init_from": "gpt2-medium", "compile": True, "dropout": 0.0}
    assert type(config["learning_rate"]) is float and type(config["dropout"]) is float


def script_defaults(script) -> dict:
    """The settings block of a training script: its top-level constant assignments, read without running it."""
    tree = ast.parse(read(script))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)}


@pytest.mark.parametrize("path", [*(f"configs/{p}" for p in sorted(os.listdir(os.path.join(ROOT, "configs")))),
                                  "experiments/configs/world_pretrain.py", "experiments/configs/world_sft.py"])
def test_every_shipped_config_loads_in_both_scripts(path):
    for script in SCRIPTS:
        load_config(script_defaults(script), [os.path.join(ROOT, path)])  # no unknown key or type


def test_script_defaults_reads_the_settings_block():
    for script in SCRIPTS:  # a reader that found nothing would let every config above pass
        assert {"lora_rank", "max_iters", "learning_rate"} <= script_defaults(script).keys()



def test_the_xl_lora_config_is_the_alpaca_recipe_with_lora_on_top():
    """configs/gpt2xl_alpaca_lora.py is a layer on gpt2_alpaca.py: together they must give exactly this run
    (the values written out by hand)."""
    layers = [os.path.join(ROOT, "configs", name) for name in ("gpt2_alpaca.py", "gpt2xl_alpaca_lora.py")]
    config = load_config(script_defaults("train_sft.py"), layers)
    expected = {"out_dir": "out/gpt2xl_alpaca_lora", "init_from": "gpt2-xl", "data_dir": "data/alpaca",
                "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": "c_attn,c_proj,c_fc", "lora_dropout": 0.0,
                "batch_size": 3, "gradient_accumulation_steps": 4, "max_iters": 1050, "eval_interval": 100,
                "eval_iters": 20, "learning_rate": 2e-4, "min_lr": 2e-5, "warmup_iters": 32, "weight_decay": 0.0,
                "beta1": 0.9, "beta2": 0.999, "grad_clip": 1.0, "dropout": 0.0, "compile": True}
    assert {key: config[key] for key in expected} == expected

def test_config_unknown_key():
    msg = config_error(["--learing_rate=1e-3"])
    assert "learing_rate" in msg and "Did you mean 'learning_rate'" in msg
    assert "Valid settings:" in msg and all(k in msg for k in DEFAULTS)


@pytest.mark.parametrize("arg, key, expected", [
    ("--batch_size=abc", "batch_size", "an int"),
    ("--max_iters=1.5", "max_iters", "an int"),
    ("--batch_size=True", "batch_size", "an int"),
    ("--compile=1", "compile", "a bool"),
    ("--learning_rate=fast", "learning_rate", "a float"),
    ("--out_dir=3", "out_dir", "a str"),
])
def test_config_wrong_type(arg, key, expected):
    msg = config_error([arg])
    assert f"{key} must be {expected} " in msg, msg


def test_config_missing_equals_sign():
    assert "--max_iters" in config_error(["--max_iters"])


def test_config_file_errors(tmp_path):
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text("batch_size = 4\nlearing_rate = 1e-3\n")
    msg = config_error([str(bad_key)])
    assert str(bad_key) in msg and "learing_rate" in msg and "learning_rate" in msg
    bad_type = tmp_path / "bad_type.py"
    bad_type.write_text("max_iters = 1.5\n")
    msg = config_error([str(bad_type)])
    assert str(bad_type) in msg and "max_iters must be an int" in msg


@pytest.fixture(scope="module")
def config_error_runs():
    """The real scripts, stopped by their configurator before any work (no data, no out_dir)."""
    return run_parallel(
        (("train_sft.py", "--learing_rate=1e-3"), {"check": False, "base": False}),
        (("train_pretrain.py", "--max_iters=1.5"), {"check": False, "base": False}),
    )


def test_script_stops_on_unknown_key(config_error_runs):
    proc = config_error_runs[0]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "unknown setting 'learing_rate'" in proc.stderr and "Did you mean 'learning_rate'" in proc.stderr
    valid = proc.stderr.split("Valid settings:")[1]
    assert all(k in valid for k in ("learning_rate", "batch_size", "gradient_accumulation_steps", "init_from"))


def test_script_stops_on_wrong_type(config_error_runs):
    proc = config_error_runs[1]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "max_iters must be an int" in proc.stderr and "1.5" in proc.stderr


# ----------------------------------------------------------------------------------------------------------
# 6. checkpoints: atomic, complete, and a seed for a new run

CKPT_KEYS = {"model", "model_args", "config", "iter_num", "best_val_loss", "meta", "script", "data_dir",
             "base_model", "optimizer", "batches_drawn", "rng_state", "scaler", "tokens"}
# what the model is: how a run computed it (attention, loss path, gradient checkpointing) is never saved
MODEL_ARGS = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "layer_norm_epsilon"}


@needs_bpe
def test_checkpoints_are_complete_and_atomic(resume_runs, one_step_runs):
    dirs = [*one_step_runs, *(d for s in SCRIPTS for d in resume_runs[s][:2])]
    for d in dirs:
        assert not [f for f in os.listdir(d) if f.endswith(".tmp")], f"{d}: a .tmp file was left behind"
        ckpt = load_ckpt(os.path.join(d, "ckpt.pt"))
        assert set(ckpt) == CKPT_KEYS and set(ckpt["model_args"]) == MODEL_ARGS
        assert ckpt["base_model"] == "scratch" and ckpt["config"]["block_size"] == 64
        best = load_ckpt(os.path.join(d, "best.pt"))
        assert set(best) == CKPT_KEYS - {"optimizer", "scaler", "batches_drawn", "rng_state", "tokens"}
        assert best["iter_num"] > 0 and best["best_val_loss"] == min(e["val_loss"] for e in evals(d))


@pytest.fixture(scope="module")
def from_own_checkpoint(resume_runs, sft_data, tmp_path_factory):
    """A new SFT run seeded from the uninterrupted run's out_dir (dropout 0.1 there), asking for dropout 0.0."""
    old = resume_runs["train_sft.py"][1]
    new = str(tmp_path_factory.mktemp("from_ckpt") / "out")
    run("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={new}", f"--init_from={old}", "--max_iters=1",
        "--dropout=0.0")
    return old, new


@needs_bpe
def test_init_from_own_checkpoint_starts_a_new_run(from_own_checkpoint):
    old, new = from_own_checkpoint
    first_eval = evals(new)[0]
    assert first_eval["iter"] == 0
    assert first_eval["val_loss"] == pytest.approx(evals(old)[-1]["val_loss"], rel=1e-6), \
        "step-0 val loss of the new run should be the old run's final val loss (same weights, same data)"
    ckpt = load_ckpt(os.path.join(new, "ckpt.pt"))
    assert ckpt["iter_num"] == 1 and ckpt["batches_drawn"]["train"] == 1
    assert all(int(s["step"]) == 1 for s in ckpt["optimizer"]["state"].values()), "a fresh optimizer"
    assert [r["iter"] for r in metrics(new) if "loss" in r] == [1]


@needs_bpe
def test_init_from_own_checkpoint_honours_dropout_setting(from_own_checkpoint):
    """A new run from our checkpoint should train with its own dropout, as init_from='gpt2' does
    (GPT.from_pretrained(..., dropout=dropout)); the checkpoint's config and model_args must agree."""
    _, new = from_own_checkpoint
    ckpt = load_ckpt(os.path.join(new, "ckpt.pt"))
    assert ckpt["config"]["dropout"] == 0.0
    assert ckpt["model_args"]["dropout"] == ckpt["config"]["dropout"], (
        f"--dropout=0.0 was silently ignored: the model trained with the old checkpoint's dropout "
        f"{ckpt['model_args']['dropout']}"
    )


# ----------------------------------------------------------------------------------------------------------
# 7. data on demand: when preparing fails (offline here), the run stops cleanly


def test_missing_default_data_is_prepared_on_demand_and_a_failure_is_clean(tmp_path):
    """The default data folder is prepared on first use; when that fails (no network: a proxy nobody listens
    on makes every download fail at once), the run stops with one line, no traceback and no folder left."""
    env = script_env(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="",
                     https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", no_proxy="")
    procs = []
    for script in SCRIPTS:  # from an empty working directory, where data/<default> does not exist
        cwd = tmp_path / script
        cwd.mkdir()
        cmd = [sys.executable, os.path.join(ROOT, script), *TINY, f"--out_dir={cwd / 'out'}"]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for script, proc in zip(SCRIPTS, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=300)
        prepare = "prepare_text.py" if script == "train_pretrain.py" else "prepare_alpaca.py"
        default = os.path.join("data", "shakespeare" if script == "train_pretrain.py" else "alpaca")
        assert proc.returncode == 2, f"{script} exited {proc.returncode}\n{stderr}"
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "could not download" in errors[0], stderr  # the prepare script's, once
        assert f"running: python {prepare} --out_dir {default}" in stdout
        assert not (tmp_path / script / "data").exists(), "a failed download leaves no data folder"
        assert not (tmp_path / script / "out").exists(), "a run that failed before any checkpoint leaves no out_dir"


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_download(tmp_path):
    procs = run_parallel(*[((s, f"--data_dir={tmp_path / 'typo'}", f"--out_dir={tmp_path / s}"), {"check": False})
                           for s in SCRIPTS])
    for script, proc in zip(SCRIPTS, procs, strict=True):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"data_dir={tmp_path / 'typo'} holds no prepared data" in proc.stderr, proc.stderr
        assert "running: python" not in proc.stdout, f"{script} tried to prepare a folder it was not asked to"
    assert sorted(os.listdir(tmp_path)) == [], "nothing is created: no data folder, no out_dir"


# ----------------------------------------------------------------------------------------------------------
# 8. the data loaders on hand-written data: exact batches, the epoch order, DDP slices, the windows


PAD = 50258  # chatml's end token: the SFT loader pads X with it
# (ids, loss mask) of each example, in the order they are stored; block_size 4 fits up to 5 tokens.
SFT_TRAIN = [
    ([10, 11, 12, 13, 14], [0, 0, 1, 1, 1]),            # A: exactly block_size + 1 tokens: usable
    ([90, 91, 92, 93, 94, 95], [0, 0, 0, 1, 1, 1]),     # too long: left out, never truncated
    ([20, 21, 22], [0, 1, 1]),                          # B
    ([30, 31, 32, 33], [0, 0, 1, 1]),                   # C
    ([40, 41], [0, 1]),                                 # D
    ([50, 51, 52, 53, 54], [0, 1, 0, 1, 1]),            # E: a prompt token between two response tokens
    ([60, 61, 62], [0, 0, 1]),                          # F
    ([70, 71, 72, PAD], [0, 1, 1, 1]),                  # G: ends with the end token (an id above 2**15)
    ([80, 81], [0, 1]),                                 # H
    ([100, 101, 102, 103, 104, 105, 106], [0] * 3 + [1] * 4),  # too long
]
SFT_VAL = [([5, 6, 7], [0, 1, 1]), ([8, 9], [0, 1])]


def write_sft_split(out_dir, split, examples):
    ids = np.array([t for tokens, _ in examples for t in tokens], dtype=np.uint16)
    mask = np.array([m for _, masks in examples for m in masks], dtype=np.uint8)
    offsets = np.cumsum([0] + [len(tokens) for tokens, _ in examples], dtype=np.int64)
    assert len(offsets) == len(examples) + 1 and offsets[0] == 0
    ids.tofile(os.path.join(out_dir, f"{split}_ids.bin"))
    mask.tofile(os.path.join(out_dir, f"{split}_mask.bin"))
    offsets.tofile(os.path.join(out_dir, f"{split}_offsets.bin"))


@pytest.fixture
def hand_sft_data(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    write_sft_split(str(out), "train", SFT_TRAIN)
    write_sft_split(str(out), "val", SFT_VAL)
    meta = {"command": ["python", "prepare_alpaca.py", "--input", "hand-written"], "template": "chatml",
            "template_fingerprint": chat_template.fingerprint("chatml"), "system_prompt": None,
            "train_on_prompt": False, "tokenizer": "gpt2",
            "vocab_size": 50259, "end_token": PAD, "n_train": len(SFT_TRAIN), "n_val": len(SFT_VAL)}
    (out / "meta.json").write_text(json.dumps(meta))
    return str(out)


def row(*pieces) -> tuple:
    """A packed row written by hand: (x, y, positions) from (tokens, mask) examples, padded to 4 positions
    (block_size 4 below). Each example gives its tokens but the last as inputs, the next tokens as targets
    (-100 where the mask is 0), and positions from 0; padding is PAD, -100, and positions from 0 again."""
    x, y, p = [], [], []
    for tokens, masks in pieces:
        x += tokens[:-1]
        y += [t if m else IGNORE for t, m in zip(tokens[1:], masks[1:], strict=True)]
        p += list(range(len(tokens) - 1))
    n_pad = 4 - len(x)
    return tuple(x + [PAD] * n_pad), tuple(y + [IGNORE] * n_pad), tuple(p + list(range(n_pad)))


A, _, B, C, D, E, F, G, H, _ = SFT_TRAIN
# Best-fit decreasing into rows of 4 positions: A and E (4 positions) fill a row each; C and G (3) start
# one each and D or H (1) fills it; B and F (2) share one. Which of D and H joins C, and whether B or F
# comes first, follows the seeded order of equal sizes: the test takes any of those packings, no other.
PACKINGS = [{row(A), row(E), row(C, one), row(G, other), row(*two)} for one, other in ((D, H), (H, D))
            for two in ((B, F), (F, B))]


def rows_of(batch) -> list[tuple]:
    X, Y, P = batch
    return [tuple(map(tuple, r)) for r in zip(X.tolist(), Y.tolist(), P.tolist(), strict=True)]


def test_sft_batches_pack_hand_written_examples(hand_sft_data, capsys):
    """What train_sft.py's get_batch draws (data.py's functions, as its loader section calls them) on the
    hand-written examples: exact rows, each epoch its own order, disjoint DDP slices."""
    loader = SFTBatches(hand_sft_data, block_size=4, batch_size=2)
    out = capsys.readouterr().out
    assert "train: leaving out 2 examples longer than block_size 4" in out, out
    assert "val:" not in out, "no val example is too long"
    assert loader.examples["train"]["usable"].tolist() == [0, 2, 3, 4, 5, 6, 7, 8], "all but the two long ones"
    assert loader.n_rows["train"] == 5 and loader.packed["train"]["fill"] == 1.0 and loader.steps_per_epoch == 2

    # the evaluation batches: the 5 rows in packing order (the two full rows first), wrapping around
    X, Y, P = loader.eval("train", 0)
    assert X.dtype == Y.dtype == P.dtype == torch.int64 and X.shape == Y.shape == P.shape == (2, 4)
    rows = rows_of((X, Y, P)) + rows_of(loader.eval("train", 1)) + rows_of(loader.eval("train", 2))
    assert set(rows[:2]) == {row(A), row(E)}
    assert set(rows[:5]) in PACKINGS and rows[5] == rows[0], rows
    assert rows_of(loader.eval("val", 0)) == [row(*SFT_VAL)] * 2  # one row; padding restarts its positions
    assert row(*SFT_VAL) == ((5, 6, 8, PAD), (6, 7, 9, IGNORE), (0, 1, 0, 0))  # (the helper, by hand)

    # with block_size 6 nothing is left out: the 6- and 7-token examples come back whole, and nothing is said
    capsys.readouterr()
    wide = SFTBatches(hand_sft_data, block_size=6, batch_size=2)
    assert "leaving out" not in capsys.readouterr().out
    first = rows_of(wide.eval("train", 0))
    assert ((100, 101, 102, 103, 104, 105), (IGNORE, IGNORE, 103, 104, 105, 106), (0, 1, 2, 3, 4, 5)) in first

    # the training stream: each epoch takes every row once, in its own order
    packing, epochs = set(rows), []
    for _ in range(3):
        seen = []
        for _ in range(2):  # 5 rows, steps of 2: 2 steps per epoch (the fifth row waits for another epoch)
            X, Y, P = loader.train()
            assert X.shape == Y.shape == P.shape == (2, 4), "every batch: batch_size rows of block_size"
            seen += rows_of((X, Y, P))
        assert len(set(seen)) == 4 and set(seen) <= packing
        epochs.append(seen)
    assert loader.drawn == 6
    assert len({tuple(e) for e in epochs}) == 3, "each epoch should be a new permutation"
    assert set(epochs[0] + epochs[1] + epochs[2]) == packing, "over epochs, every row is seen"

    # DDP: in each step, the two ranks' batches are disjoint and together the single-process step
    single = SFTBatches(hand_sft_data, block_size=4, batch_size=4)
    ranks = [SFTBatches(hand_sft_data, block_size=4, batch_size=2, world_size=2, rank=r) for r in (0, 1)]
    accum = [SFTBatches(hand_sft_data, block_size=4, batch_size=1, gradient_accumulation_steps=2, world_size=2,
                        rank=r) for r in (0, 1)]
    for step in range(3):  # three epochs of one step of 4 rows
        want = rows_of(single.train())
        got = [rows_of(r.train()) for r in ranks]
        assert not set(got[0]) & set(got[1]), f"step {step}: the ranks share rows {got}"
        assert sorted(got[0] + got[1]) == sorted(want), f"step {step}: ranks {got} vs one process {want}"
        # and with 2 micro-batches of 1 per rank: still the same 4 rows per step
        got = [rows_of(r.train()) + rows_of(r.train()) for r in accum]
        assert not set(got[0]) & set(got[1]) and sorted(got[0] + got[1]) == sorted(want), (step, got, want)


def write_text_data(out_dir, train, val):
    os.makedirs(out_dir, exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(os.path.join(out_dir, "train.bin"))
    np.asarray(val, dtype=np.uint16).tofile(os.path.join(out_dir, "val.bin"))
    meta = {"command": ["python", "prepare_text.py", "--input", "hand-written"], "template": "none",
            "tokenizer": "gpt2", "vocab_size": 50257, "end_token": 50256,
            "n_train_tokens": len(train), "n_val_tokens": len(val)}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    return out_dir


def test_text_windows_and_their_targets():
    """What train_pretrain.py's get_batch draws (data.spread, data.random_starts, data.windows): windows of
    consecutive tokens whose targets are the next ones; evaluation windows spread evenly; random starts that
    reach every window and depend only on (seed, process, batch number)."""
    tokens = np.arange(100, dtype=np.uint16)
    n_starts = 100 - 8  # train_pretrain.py's: a window and its next-token targets must fit
    # evaluation: windows spread evenly; stride (100 - 8) // (2 * 3) = 15 over 92 possible starts
    assert data.spread(n_starts, 0, 3, 2).tolist() == [0, 15, 30]
    assert data.spread(n_starts, 1, 3, 2).tolist() == [45, 60, 75]
    assert data.spread(n_starts, 2, 3, 2).tolist() == [90, 13, 28], "(6, 7, 8) * 15 wrap around 92 starts"
    X, Y = data.windows(tokens, np.array([0, 15, 91]), 8)
    assert X.dtype == Y.dtype == np.int64 and X.shape == Y.shape == (3, 8)
    assert X.tolist() == [list(range(s, s + 8)) for s in (0, 15, 91)]
    assert Y.tolist() == [list(range(s + 1, s + 9)) for s in (0, 15, 91)], "the last window's targets fit"
    high = np.arange(50000, 50040, dtype=np.uint16)  # ids above 2**15: uint16 on disk, int64 in the batch
    X, Y = data.windows(high, data.spread(40 - 8, 1, 3, 2), 8)  # stride (40 - 8) // 6 = 5
    assert X.tolist() == [list(range(50000 + s, 50008 + s)) for s in (15, 20, 25)] and (Y == X + 1).all()

    starts = np.concatenate([data.random_starts(n_starts, 16, SEED, n, process()) for n in range(100)])
    assert set(starts.tolist()) == set(range(92)), "every window start from 0 to len - block_size - 1, no other"
    batch_7 = data.random_starts(n_starts, 16, SEED, 7, process(0, 2))
    assert np.array_equal(batch_7, data.random_starts(n_starts, 16, SEED, 7, process(0, 2))), "a function of its seed"
    assert not np.array_equal(batch_7, data.random_starts(n_starts, 16, SEED, 7, process(1, 2))), "each its own"


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_text_shorter_than_a_window_stops_the_run_naming_the_split(tmp_path, split):
    """train_pretrain.py's loader: exactly block_size + 1 tokens make one window; one token fewer stops the run
    with one line naming the split."""
    train, val = (np.arange(8), np.arange(50)) if split == "train" else (np.arange(50), np.arange(3))
    data_dir = write_text_data(str(tmp_path / "short"), train, val)
    with pytest.raises(UserError) as e:
        run_script("train_pretrain.py", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}",
                   "--block_size=8", "--batch_size=2", "--max_iters=1")
    msg = str(e.value)
    assert msg.startswith(f"{split}.bin has {len(train if split == 'train' else val)} tokens"), msg
    assert "block_size + 1 = 9" in msg, msg
    exact = write_text_data(str(tmp_path / "exact"), np.arange(9), np.arange(9))
    run_script("train_pretrain.py", f"--data_dir={exact}", f"--out_dir={tmp_path / split}", "--block_size=8",
               "--batch_size=2", "--max_iters=1")


@needs_bpe
def test_resume_with_another_batch_geometry_stops_with_a_message(resume_runs, sft_data):
    """The loader's position is a count of micro-batches: resuming with another batch size would silently
    skip or repeat data, so it must refuse."""
    resumed, _, _ = resume_runs["train_sft.py"]
    before = open(os.path.join(resumed, "ckpt.pt"), "rb").read()
    proc = run("train_sft.py", *RESUME, f"--data_dir={sft_data}", f"--out_dir={resumed}", "--init_from=resume",
               f"--max_iters={3 * K}", "--batch_size=3", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "resume it with the same" in proc.stderr and "batch_size" in proc.stderr
    assert open(os.path.join(resumed, "ckpt.pt"), "rb").read() == before, "the checkpoint is untouched"
