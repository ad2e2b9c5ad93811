"""
How fast is nanoSFT? Every comparison here runs side by side in one process, with interleaved repetitions
(round 1: A, B, C; round 2: A, B, C; ...), so a busy or throttling machine slows every variant alike.
Figures are medians after warm-up; a ratio is the median of the per-round ratios.

    (a) train step (forward + backward + AdamW), ours vs Hugging Face's GPT2LMHeadModel with the same weights
    (b) generation: ours with the KV cache, without it (a plain loop), with bf16 weights; HF generate
    (c) the SFT loader of train_sft.py: share of real (non-pad) and target tokens in its batches
    (d) prepare_alpaca.prepare time, 5,000 real records and 52,002 (the 5,000 repeated)
    (e) peak memory of SFT train steps (fresh subprocess): full fine-tuning vs LoRA r=8; GPT-2 XL projected
    (f) AdamW: default vs foreach vs fused
    (g) allocator: glibc's default vs tune_cpu_allocator()
    (h) GPU only: the main job (train_sft.py configs/gpt2_alpaca.py, random GPT-2 124M, Alpaca sample),
        compiled (cold and warm cache) and eager: tokens/s, MFU two ways, set-up and compile time, the host's
        and the GPU's time a step, peak memory, the whole recipe's projected time (--full: timed)
    (i) prepare_alpaca.py on 1M generated conversations (a 0.9 GB JSONL): records/s, tokens/s, peak memory of
        every process, against bare single-threaded tiktoken on the same contents, and HF datasets.map (~4 min)
    (j) checkpoint writes of GPT-2 124M, with and without AdamW's state
    (k) the trainers' thread count: 1, every core, the default (idle cores), on an idle machine and a busy one

    python bench/bench.py                    # every CPU section (~10 minutes on 2 CPU cores)
    python bench/bench.py --quick            # tiny shapes, 2 reps: a smoke test (seconds)
    python bench/bench.py --only a,f --reps 7 --json bench.json
"""

import argparse
import ast
import atexit
import contextlib
import ctypes
import datetime
import functools
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: bench/ is one level down
sys.path.insert(0, ROOT)

import common  # noqa: E402
import data  # noqa: E402
import errors  # noqa: E402
import lora  # noqa: E402
from common import DTYPES, cpu_has_native_bf16, pick_device, pick_dtype, tune_cpu_allocator  # noqa: E402
from hf_checkpoint import CONV1D_WEIGHTS  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")  # the same place tests/conftest.py looks
ALPACA_5000 = os.path.join(SHARED, "alpaca", "alpaca_5000.json")

# Model shapes (GPTConfig arguments). TINY is for --quick: small enough that every section takes a second.
SMALL = dict(n_layer=6, n_head=6, n_embd=384)  # vocab 50304, block 1024: GPTConfig's defaults
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768)
TINY = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=1000, block_size=256)
LR, BETAS, WEIGHT_DECAY = 6e-4, (0.9, 0.95), 0.1  # train_sft.py's defaults
# Alpaca's share of targets (response + end token) among an SFT batch's positions: 68.5% of the real tokens
# are targets and 98.2% of the positions are real (section c), 0.67; 0.66 errs on the side of fewer targets
# (less work skipped). The SFT batches of (a), (e) and (h) use it.
SFT_TARGET_SHARE = 0.66

device, device_type = "cpu", "cpu"  # set in main() from --device
SUMMARY = []  # every table again, in Markdown, printed at the end for BENCHMARKS.md

# ----------------------------------------------------------------------------------------------------------
# timing and printing


def sync(dev_type=None):
    if (dev_type or device_type) == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously: without this we would time the launch only


def interleaved(variants, reps, warmup=1, dev_type=None):
    """Run each variant (a no-argument function) warmup times untimed, then reps timed rounds of all of them.

    Returns ({name: [seconds per round]}, {name: what its last run returned}).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times, last = {name: [] for name in variants}, {}
    for _ in range(reps):
        for name, fn in variants.items():
            sync(dev_type)
            t0 = time.perf_counter()
            last[name] = fn()
            sync(dev_type)
            times[name].append(time.perf_counter() - t0)
    return times, last


def speedup(times, fast, slow):
    """How many times faster `fast` ran than `slow`: the median over rounds of slow's time / fast's time."""
    return statistics.median(s / f for f, s in zip(times[fast], times[slow], strict=True))


def med(xs):
    return statistics.median(xs)


def show(title, headers, rows, notes=()):
    """Print an aligned table (and keep a Markdown copy for the summary)."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for note in notes:
        print(f"  {note}")
    SUMMARY.extend([f"{title}:", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)])
    SUMMARY.extend("| " + " | ".join(row) + " |" for row in rows)
    SUMMARY.extend([""] + [f"- {note}" for note in notes] + ([""] if notes else []))


def skipped(reason):
    print(f"skipped: {reason}")
    SUMMARY.extend([f"skipped: {reason}", ""])
    return {"skipped": reason}


def quietly(fn, *args, **kwargs):
    """Call fn with its prints and progress bars swallowed (prepare() reports on every call)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# shared helpers: batches, train steps, the Hugging Face twin of a model


def autocast(dtype, dev_type=None):
    dev_type = dev_type or device_type
    return contextlib.nullcontext() if dtype == "float32" else torch.autocast(dev_type, dtype=DTYPES[dtype])


def random_batch(vocab_size, batch, seq, dev=None, target_share=1.0):
    """X and its targets Y. target_share 1.0: every position a target, as in pretraining. Below 1.0, like an
    SFT batch: each row's first positions are prompt (target -100), the rest response."""
    tokens = torch.randint(0, vocab_size, (batch, seq + 1))
    X, Y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    Y[:, : round((1 - target_share) * seq)] = -100
    return X.to(dev or device), Y.to(dev or device)


def train_step(model, optimizer, X, Y, dtype="float32", hf=False):
    with autocast(dtype):
        if hf:
            # Hugging Face shifts the labels itself: label t+1 is the target of position t. So labels = X with
            # Y's -100s asks it for the same loss (over T-1 positions instead of T: the same work within one).
            loss = model(input_ids=X, labels=torch.cat((X[:, :1], Y[:, :-1]), dim=1), use_cache=False).loss
        else:
            loss = model(X, Y)[1]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_flops(model, Y, computes_every_logit=False):
    """Training FLOPs of one step on targets Y (B, T): 6N + 12LTC per position (PaLM, appendix B), less
    the output layer's 6 * vocab * n_embd at positions without a target, which our forward skips (HF's
    computes every logit: computes_every_logit=True)."""
    B, T = Y.shape
    cfg = model.config
    flops = (6 * model.num_params() + 12 * cfg.n_layer * T * cfg.n_embd) * B * T
    if not computes_every_logit:
        flops -= 6 * model.config.vocab_size * model.config.n_embd * (Y == -100).sum().item()
    return flops


def adamw(model, **impl):
    """AdamW grouped as model.configure_optimizer does it (decay on matrices only); impl picks the kernel."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=BETAS, **impl)


def hf_twin(model):
    """transformers' GPT2LMHeadModel holding exactly our weights, or None when transformers is not installed.

    Same vocabulary (50304, not 50257) and no dropout, so both models do the same work.
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    cfg = model.config
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, layer_norm_epsilon=cfg.layer_norm_epsilon, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
        bos_token_id=None, eos_token_id=None, pad_token_id=None,  # no stop token: generate runs its full length
    ))
    hf_state = hf.state_dict()  # tensors sharing storage with hf's parameters: copying into them sets the weights
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name != "lm_head.weight":  # tied to wte in both models
                hf_state[name].copy_(tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor)
    return hf.to(device).train(model.training)


@torch.no_grad()
def logits_gap(model, hf, X):
    """max |our logits - HF's| on X: ~1e-5 says the two models really hold the same weights."""
    was_training = model.training
    model.eval()
    hf.eval()
    gap = (model(X)[0] - hf(input_ids=X).logits).abs().max().item()
    model.train(was_training)
    hf.train(was_training)
    return gap


def matmul_peak(dtypes, n, reps, dev=None):
    """FLOP/s of an n x n x n matmul per dtype: the ceiling a training step is measured against."""
    dev = dev or device
    mats = {dt: (torch.randn(n, n, device=dev, dtype=DTYPES[dt]), torch.randn(n, n, device=dev, dtype=DTYPES[dt]))
            for dt in dtypes}
    variants = {dt: (lambda a=a, b=b: torch.mm(a, b)) for dt, (a, b) in mats.items()}
    times, _ = interleaved(variants, reps, warmup=2, dev_type=common.device_type(dev))
    return {dt: 2 * n**3 / med(t) for dt, t in times.items()}


def reps_for(args, full, quick=2):
    return args.reps or (quick if args.quick else full)


# ----------------------------------------------------------------------------------------------------------
# (a) train step: ours vs Hugging Face


def bench_train_step(args):
    reps = reps_for(args, 5)
    auto = pick_dtype("auto", device_type)
    n = 256 if args.quick else 2048
    peak = matmul_peak(["float32"] + ([auto] if auto != "float32" else []), n, max(reps, 5))
    show(f"matmul peak ({n}^3, median of {max(reps, 5)})", ["dtype", "GFLOP/s"],
         [[dt, f"{f / 1e9:,.0f}"] for dt, f in peak.items()])
    if args.quick:
        shapes = [("2L/64d (n_head 2), seq 32, batch 2, vocab 1000", TINY, 32, 2),
                  ("2L/64d (n_head 2), seq 64, batch 4, vocab 1000", TINY, 64, 4)]
    else:
        shapes = [("6L/384d (n_head 6), seq 256, batch 8", SMALL, 256, 8),
                  ("GPT-2 124M shape (12L/768d/12 heads), seq 512, batch 2", GPT2_124M, 512, 2)]
    out = {"peak_flops": peak, "auto_dtype": auto, "shapes": []}
    for name, shape, seq, batch in shapes:
        out["shapes"].append({"name": name, **bench_one_shape(name, shape, seq, batch, auto, peak, reps)})
    return out


def bench_one_shape(name, shape, seq, batch, auto, peak, reps):
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**shape)).to(device)
    optimizer = model.configure_optimizer(WEIGHT_DECAY, LR, BETAS, device_type)  # fused, as the trainer's
    X, Y = random_batch(model.config.vocab_size, batch, seq, target_share=SFT_TARGET_SHARE)
    Xp, Yp = random_batch(model.config.vocab_size, batch, seq)  # every position a target
    n_targets = (Y != -100).sum().item()
    # GFLOP/s counts the work each one really does: ours skips the output layer where there is no target.
    full_flops, ours_flops = step_flops(model, Yp), step_flops(model, Y)
    # (label, key, step, FLOPs, dtype)
    variants = [("ours fp32, SFT batch", "ours_fp32", lambda: train_step(model, optimizer, X, Y), ours_flops,
                 "float32")]
    hf = hf_twin(model)
    if hf is not None:
        gap = logits_gap(model, hf, X)
        hf_optimizer = adamw(hf, fused=device_type in ("cpu", "cuda"))
        variants.append(("HF fp32, SFT batch", "hf_fp32", lambda: train_step(hf, hf_optimizer, X, Y, hf=True),
                         full_flops, "float32"))
    # The same model and optimizer as "ours fp32": timing does not depend on the weights, and a 124M model
    # with its AdamW state is 2 GB we need only once.
    variants.append((f"ours auto ({auto}), SFT batch", "ours_auto",
                     lambda: train_step(model, optimizer, X, Y, dtype=auto), ours_flops, auto))
    variants.append(("ours fp32, every position a target", "ours_fp32_all_targets",
                     lambda: train_step(model, optimizer, Xp, Yp), full_flops, "float32"))
    if hf is not None:
        variants.append(("HF fp32, every position a target", "hf_fp32_all_targets",
                         lambda: train_step(hf, hf_optimizer, Xp, Yp, hf=True), full_flops, "float32"))
    times, _ = interleaved({key: step for _, key, step, _, _ in variants}, reps)

    rows, figures = [], {"batch": batch, "seq": seq, "sft_target_share": n_targets / (batch * seq)}
    for label, key, _, flops, dtype in variants:
        t = med(times[key])
        rows.append([label, f"{batch * seq / t:,.0f}", f"{1000 * t:,.1f}", f"{flops / t / 1e9:,.0f}",
                     f"{100 * flops / t / peak[dtype]:.0f}%"])
        figures[key] = {"tokens_per_s": batch * seq / t, "step_s": t, "gflops": flops / t / 1e9, "dtype": dtype}
    ratios = {"auto_over_ours_fp32": speedup(times, "ours_auto", "ours_fp32")}
    if hf is not None:
        ratios |= {"ours_over_hf_fp32": speedup(times, "ours_fp32", "hf_fp32"),
                   "auto_over_hf_fp32": speedup(times, "ours_auto", "hf_fp32"),
                   "ours_over_hf_fp32_all_targets": speedup(times, "ours_fp32_all_targets", "hf_fp32_all_targets")}
    notes = [f"SFT batch: {100 * n_targets / (batch * seq):.0f}% of positions are targets (Alpaca's share)",
             "; ".join(f"{k.replace('_over_', ' / ')}: {v:.2f}x" for k, v in ratios.items()),
             "HF skipped: transformers is not installed" if hf is None else
             f"same weights: max |logits ours - HF| = {gap:.1e}"]
    show(f"{name}: median of {reps} (GFLOP/s of the work each does; % of the matmul peak of the row's dtype)",
         ["variant", "tokens/s", "ms/step", "GFLOP/s", "% of peak"], rows, notes)
    return figures | ratios | {"logits_max_diff": gap if hf is not None else None}


# ----------------------------------------------------------------------------------------------------------
# (b) generation


def bench_generation(args):
    reps = reps_for(args, 3)
    shape, prompt_len, new = (TINY, 16, 32) if args.quick else (GPT2_124M, 64, 128)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**shape)).to(device).eval()
    with torch.no_grad():
        # At GPT-2's init (std 0.02) the logits of a random model are so flat that the greedy choice is
        # often a near-tie, and rounding alone could flip it. Wider embeddings make every choice decisive.
        model.transformer.wte.weight.normal_(0.0, 0.2)
    hf = hf_twin(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(device)

    labels = {"ours_cached": "ours, KV cache", "ours_uncached": "ours, no cache (the whole text every step)",
              "hf": "HF generate (its cache)"}

    @torch.no_grad()
    def uncached(n=new):  # what the KV cache buys: every step reruns the whole sequence
        idx = prompt
        for _ in range(n):
            idx = torch.cat((idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
        return idx

    variants = {"ours_cached": lambda n=new: model.generate(prompt, n, temperature=0), "ours_uncached": uncached}
    auto = pick_dtype("auto", device_type)
    if auto != "float32":  # what sample.py runs by default: the weights themselves in bf16 (half the bytes)
        model_auto = GPT(GPTConfig(**shape)).to(device)
        model_auto.load_state_dict(model.state_dict())
        model_auto.to(DTYPES[auto]).eval()
        labels["ours_auto"] = f"ours, KV cache, {auto} weights (sample.py default)"
        variants["ours_auto"] = lambda n=new: model_auto.generate(prompt, n, temperature=0)
    if hf is not None:
        variants["hf"] = lambda n=new: hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                   max_new_tokens=n, min_new_tokens=n)
    for fn in variants.values():  # warm-up: a short run each (a full uncached one costs ~15 s on 2 cores)
        fn(8)
    times, outputs = interleaved(variants, reps, warmup=0)

    cached = outputs["ours_cached"]
    with torch.no_grad():  # how close the nearest call was: the smallest top-1 minus top-2 logit on the path
        top2 = model(cached)[0][0, prompt_len - 1 : -1].topk(2).values
        margin = (top2[:, 0] - top2[:, 1]).min().item()
    same = {"cached_equals_uncached": torch.equal(cached, outputs["ours_uncached"])}
    ratios = {"cached_over_uncached": speedup(times, "ours_cached", "ours_uncached")}
    if hf is not None:
        same["cached_equals_hf"] = torch.equal(cached, outputs["hf"])
        ratios["cached_over_hf"] = speedup(times, "ours_cached", "hf")
        if "ours_auto" in times:
            ratios["auto_over_hf"] = speedup(times, "ours_auto", "hf")
    if "ours_auto" in times:  # bf16 rounding may flip a choice of a random model: report, don't require
        same["auto_equals_fp32_share"] = float((outputs["ours_auto"] == cached).float().mean())
    rows = [[labels[k], f"{new / med(ts):,.1f}", f"{med(ts):,.2f}"] for k, ts in times.items()]
    notes = ["; ".join(f"{k.replace('_over_', ' / ')}: {v:.2f}x" for k, v in ratios.items()),
             "same greedy tokens: " + ", ".join(f"{k.replace('_equals_', ' == ')}: {v}" for k, v in same.items())
             + f" (smallest top-1 vs top-2 logit margin on the path: {margin:.3f})"]
    show(f"generation, {model.num_params() / 1e6:.1f}M params, prompt {prompt_len}, {new} new tokens, batch 1, "
         f"greedy, fp32 unless said: median of {reps}", ["variant", "tokens/s", "s/run"], rows, notes)
    figures = {k: {"tokens_per_s": new / med(ts), "s": med(ts)} for k, ts in times.items()}
    return {"prompt": prompt_len, "new_tokens": new, **figures, **ratios, **same, "min_logit_margin": margin}


# ----------------------------------------------------------------------------------------------------------
# (c) the SFT loader, and (d) prepare time: both on real Alpaca records


def alpaca_ready():
    """None if the Alpaca file and a GPT-2 tokenizer are at hand, else why not."""
    if not os.path.exists(ALPACA_5000):
        return f"{ALPACA_5000} not found"
    import chat_template

    # No network here: point tiktoken at ../shared's copy of the GPT-2 BPE files, as tests/conftest.py does
    shared_bpe = os.path.join(SHARED, "gpt2")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and all(os.path.exists(os.path.join(shared_bpe, f))
                                                       for f in chat_template.BPE_CACHE_NAMES):
        cache = tempfile.mkdtemp(prefix="bench-tiktoken-")
        chat_template.fill_tiktoken_cache(shared_bpe, cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        atexit.register(shutil.rmtree, cache, True)

    try:
        chat_template.get_tokenizer()
    except errors.UserError as e:  # no BPE files in tiktoken's cache, and no network
        return f"{e} (or put GPT-2's BPE files in ../shared/data/gpt2)"
    return None


def bench_loader(args):
    why_not = alpaca_ready()
    if why_not:
        return skipped(why_not)
    import prepare_alpaca

    batch_size, block_size = 12, 1024  # configs/gpt2_alpaca.py's micro-batch
    with tempfile.TemporaryDirectory() as tmp:  # train_sft.py's loader: the data.py functions it calls
        quietly(prepare_alpaca.prepare, inputs=[ALPACA_5000], out_dir=tmp)
        meta = data.read_meta(tmp)
        train = data.read_examples(tmp, meta, "train", block_size, verbose=False)
        packed = data.pack(train, block_size, seed=1337)
        n_rows = len(packed["starts"]) - 1
        n_batches = n_rows // batch_size  # one epoch (a step is one batch)
        positions = targets = 0
        t0 = time.perf_counter()
        one_process = SimpleNamespace(rank=0, world_size=1)  # (what epoch_rows reads of a runtime)
        for n in range(n_batches):
            rows = data.epoch_rows(n_rows, n, batch_size, n_batches, 1337, one_process)
            X, Y, _ = data.packed_batch(train, packed, rows, block_size, meta["end_token"])
            positions += X.size
            targets += int((Y != -100).sum())
        loader_s = time.perf_counter() - t0
        usable, lengths = train["usable"], train["lengths"]
    real = int((lengths[usable] - 1).sum())  # an example of n tokens gives n-1 (input, next token) positions
    # The simple alternatives, from the same examples: pad every example to the context window, or pad each
    # random batch of 8 examples to its longest one.
    order = np.random.default_rng(1337).permutation(usable)
    random_batches = order[: len(order) // 8 * 8].reshape(-1, 8)
    random_share = (lengths[random_batches] - 1).sum() / (8 * (lengths[random_batches] - 1).max(axis=1).sum())
    shares = {f"pad every example to {block_size}": real / (len(usable) * block_size),
              "pad to the longest of a random batch of 8": float(random_share),
              "train_sft.py: packed rows (best-fit decreasing)": real / (n_rows * block_size)}
    rows = [[name, f"{100 * share:.1f}%"] for name, share in shares.items()]
    notes = [f"{len(usable):,} train examples, {real:,} real token positions, packed into {n_rows} rows of "
             f"{block_size}; target tokens: {100 * targets / positions:.1f}% of a batch's positions",
             f"one epoch of get_batch('train'), {n_batches} batches of {batch_size} rows: {loader_s:.2f} s "
             f"({1000 * loader_s / n_batches:.2f} ms a batch)"]
    show("SFT batches over one epoch of Alpaca (5,000 records, ChatML)", ["batching", "non-pad share"], rows, notes)
    return {"examples": len(usable), "rows": n_rows, "batches": n_batches, "real_tokens": real,
            "target_share": targets / positions, "non_pad_share": shares, "loader_s_per_epoch": loader_s}


def bench_prepare(args):
    why_not = alpaca_ready()
    if why_not:
        return skipped(why_not)
    import prepare_alpaca

    reps = reps_for(args, 3, quick=1)
    with open(ALPACA_5000) as f:
        records = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:  # deleted afterwards, the 52K file with it
        inputs = {"real_5000": (f"{len(records):,} real records", ALPACA_5000, len(records))}
        if not args.quick:
            big = (records * (52002 // len(records) + 1))[:52002]  # as many as the full alpaca_data.json
            big_path = os.path.join(tmp, "alpaca_52002.json")
            with open(big_path, "w") as f:
                json.dump(big, f)
            inputs["repeated_52002"] = (f"{len(big):,} records (the {len(records):,} repeated)", big_path, len(big))
        variants = {key: functools.partial(quietly, prepare_alpaca.prepare, inputs=[path],
                                           out_dir=os.path.join(tmp, key)) for key, (_, path, _) in inputs.items()}
        times, _ = interleaved(variants, reps, warmup=0)  # the tokenizer is already loaded (alpaca_ready)
    rows = [[label, f"{med(times[key]):.2f}", f"{n / med(times[key]):,.0f}"] for key, (label, _, n) in inputs.items()]
    show(f"prepare_alpaca.prepare (read, check, tokenise, split, write): median of {reps}",
         ["input", "seconds", "records/s"], rows, ["tokenizer loaded beforehand (once per process, not included)"])
    return {key: {"records": n, "s": med(times[key])} for key, (_, _, n) in inputs.items()}


# ----------------------------------------------------------------------------------------------------------
# (e) peak memory of train steps, full vs LoRA, measured in a fresh process


def memory_probe(spec):
    """Run by `bench.py --_memory_probe SPEC` in a fresh process: memory two train steps add to the model's.

    A fresh process because the peak only ever grows: in this one it would remember earlier sections.
    """
    import resource

    torch.set_num_threads(spec["threads"])
    dev = spec["device"]
    dev_type = common.device_type(dev)
    if dev_type == "cpu":
        tune_cpu_allocator()  # as the trainer does
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**spec["shape"], gradient_checkpointing=spec.get("checkpointing", False)))
    if spec["lora_rank"]:
        lora.apply_lora(model, spec["lora_rank"], alpha=16.0)
    model.to(dev)
    optimizer = model.configure_optimizer(WEIGHT_DECAY, LR, BETAS, dev_type)  # its state is created by step 1
    X, Y = random_batch(model.config.vocab_size, spec["batch"], spec["seq"], dev, SFT_TARGET_SHARE)
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux

    def used():
        if dev_type == "cuda":
            return torch.cuda.max_memory_allocated()
        # Linux carries ru_maxrss over from the parent across fork + exec (a 6 GB parent makes every child
        # report 6 GB); VmHWM belongs to this process's own address space.
        if os.path.exists("/proc/self/status"):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib

    if dev_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = used()
    for _ in range(2):  # the second step is the steady state: AdamW's state exists while it runs
        with autocast(spec["dtype"], dev_type):
            _, loss = model(X, Y)
        loss.backward()
        optimizer.step()
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
        optimizer.zero_grad(set_to_none=True)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    sync(dev_type)
    counts = lora.weight_counts(model)
    print(json.dumps({"baseline": baseline, "peak": used(), "grads": grads, "adamw": state,
                      "trainable": counts["trainable"], "params": counts["total"]}))


def memory_projection(shape: dict, rank: int) -> dict:
    """Parameters, trainable ones, and the bytes of weights + gradients + AdamW state of a shape, full vs LoRA
    (fp32 master weights, as the trainers keep them), counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**shape))
        n = lora.weight_counts(model)["total"]
        lora.apply_lora(model, rank, alpha=16.0)
        trainable = lora.weight_counts(model)["trainable"]
    return {"params": n, "trainable": trainable, "full_bytes": 16 * n, "lora_bytes": 4 * n + 16 * trainable}


def bench_memory(args):
    shape, batch, seq = (TINY, 2, 32) if args.quick else (GPT2_124M, 8, 256)
    auto = pick_dtype("auto", device_type)
    rows, out, mib = [], {"batch": batch, "seq": seq}, 1 << 20
    for dtype in ["float32"] + ([auto] if auto != "float32" else []):
        # full, with gradient checkpointing; LoRA with the chat tokens' rows (vocab 50304, as ChatML needs) and
        # without them (GPT-2's own 50257)
        for rank, vocab, checkpointing in ((0, None, False), (0, None, True), (8, None, False), (8, 50257, False)):
            spec = {"shape": shape | ({"vocab_size": vocab} if vocab else {}), "batch": batch, "seq": seq,
                    "dtype": dtype, "device": device, "threads": torch.get_num_threads(), "lora_rank": rank,
                    "checkpointing": checkpointing}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory_probe", json.dumps(spec)],
                                  cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            step = r["peak"] - r["baseline"]
            method = ((f"LoRA r={rank}" if rank else "full") + (f", vocab {vocab}" if vocab else "")
                      + (", gradient checkpointing" if checkpointing else ""))
            rows.append([dtype, method, f"{r['trainable']:,} ({r['trainable'] / r['params']:.2%})",
                         f"{r['grads'] / mib:,.1f}", f"{r['adamw'] / mib:,.1f}", f"{r['baseline'] / mib:,.0f}",
                         f"{r['peak'] / mib:,.0f}", f"{step / mib:,.0f}"])
            out[f"{dtype} {method}"] = {"trainable": r["trainable"], "grads_mib": r["grads"] / mib,
                                        "adamw_mib": r["adamw"] / mib, "baseline_mib": r["baseline"] / mib,
                                        "peak_mib": r["peak"] / mib, "step_mib": step / mib}
    what = "CUDA max_memory_allocated" if device_type == "cuda" else "VmHWM"
    show(f"peak memory of two train steps ({what}), {shape['n_layer']}L/{shape['n_embd']}d, batch {batch} of seq "
         f"{seq}", ["dtype", "method", "trained weights", "gradients (MiB)", "AdamW state (MiB)",
                    "after model (MiB)", "peak (MiB)", "step adds (MiB)"], rows,
         ["gradients and AdamW state: the tensors' own bytes after the step; 'after model' includes the Python "
          "process and torch itself on CPU; 'step adds' = peak - that"])
    gib, projected = 1 << 30, []
    for name, xl in (("GPT-2 124M", GPT2_124M), ("GPT-2 XL", dict(n_layer=48, n_head=25, n_embd=1600))):
        p = memory_projection(xl, 8)
        projected.append([name, f"{p['params'] / 1e9:.3f}B", f"{p['trainable']:,}", f"{p['full_bytes'] / gib:.1f}",
                          f"{p['lora_bytes'] / gib:.1f}"])
        out[f"projected {name}"] = p
    show("weights + gradients + AdamW state, full vs LoRA r=8 (fp32 master weights; activations not included)",
         ["model", "parameters", "LoRA r=8 trains", "full (GiB)", "LoRA r=8 (GiB)"], projected,
         ["full: 16 bytes per parameter (weight 4, gradient 4, two AdamW moments 8); LoRA: 4 per frozen "
          "parameter, 16 per trained one"])
    return out


# ----------------------------------------------------------------------------------------------------------
# (f) AdamW implementations


def bench_adamw(args):
    reps = reps_for(args, 5)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**(TINY if args.quick else GPT2_124M))).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    # One set of parameters, three optimizers (each keeps its own state): the step's cost does not depend
    # on the values, and one copy of a 124M model's parameters and gradients is enough memory.
    impls = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    variants = {name: adamw(model, **impl).step for name, impl in impls.items()}
    times, _ = interleaved(variants, reps)
    rows = [[name if name == "default" else f"{name}=True", f"{1000 * med(ts):,.1f}",
             f"{speedup(times, 'fused', name):.2f}x"] for name, ts in times.items()]
    default = "the per-tensor for-loop" if device_type == "cpu" else "foreach"
    show(f"AdamW step on {model.num_params(non_embedding=False) / 1e6:.1f}M parameters: median of {reps}",
         ["implementation", "ms/step", "fused is faster by"], rows, [f"default on {device_type}: {default}"])
    return {name: {"step_s": med(ts), "fused_speedup": speedup(times, "fused", name)}
            for name, ts in times.items()}


# ----------------------------------------------------------------------------------------------------------
# (g) the allocator

# The allocator is per-process state that only takes full effect from a process's first allocations (glibc's
# dynamic mmap threshold, the heap's shape), so the two settings run in fresh processes, alternating
# default, tuned, default, tuned, ... and each process reports the median of its own steps.


def alloc_probe(spec):
    """Run by `bench.py --_alloc_probe SPEC` in a fresh process: median train-step time under one malloc setting
    and one thread count (0: the trainers' default, common.pick_threads)."""
    torch.set_num_threads(spec["threads"] or common.pick_threads(0))
    if spec["setting"] == "tuned":
        tune_cpu_allocator()
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**spec["shape"]))
    optimizer = model.configure_optimizer(WEIGHT_DECAY, LR, BETAS, "cpu")
    X, Y = random_batch(model.config.vocab_size, spec["batch"], spec["seq"])
    times = []
    for i in range(spec["steps"] + 1):
        t0 = time.perf_counter()
        train_step(model, optimizer, X, Y, spec["dtype"])
        if i > 0:  # the first step builds the heap
            times.append(time.perf_counter() - t0)
    print(json.dumps({"step_s": med(times), "threads": torch.get_num_threads()}), flush=True)


def step_probe(spec) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_alloc_probe", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train-step probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_threads(args):
    """(k) The trainers' thread count: 1, every core, and their default (the cores idle at the start), on an idle
    machine and beside another job (a training process on every core, torch's own default), fresh processes."""
    if device_type != "cpu":
        return skipped("threads matter on CPU only")
    reps = reps_for(args, 3)
    shape, seq, batch = (TINY, 32, 2) if args.quick else (dict(n_layer=4, n_head=4, n_embd=128, block_size=256), 256, 6)
    cores = os.cpu_count() or 1
    settings = {"1 thread": 1, f"{cores} threads (every core)": cores, "threads=0 (the default)": 0}
    spec = {"setting": "tuned", "shape": shape, "seq": seq, "batch": batch, "dtype": "float32",
            "steps": 2 if args.quick else 8}
    results, rows = {}, []
    for load in ("idle",) if args.quick else ("idle", "beside another job"):
        other = None
        if load != "idle":  # another training run, on every core, until we stop it
            other = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_alloc_probe",
                                      json.dumps({**spec, "steps": 100000, "threads": cores})], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)  # (started and training)
        try:
            times = {name: [] for name in settings}
            chosen = []
            for _ in range(reps):
                for name, threads in settings.items():
                    out = step_probe({**spec, "threads": threads})
                    times[name].append(out["step_s"])
                    chosen += [out["threads"]] if threads == 0 else []
        finally:
            if other is not None:
                other.kill()
                other.wait()
        results[load] = {name: med(ts) for name, ts in times.items()} | {"default_chose": sorted(set(chosen))}
        rows += [[load, name, f"{1000 * med(ts):,.0f}"] for name, ts in times.items()]
        rows.append([load, "(the default chose)", ", ".join(f"{n} thread(s)" for n in sorted(set(chosen)))])
    show(f"train step {shape['n_layer']}L/{shape['n_embd']}d, batch {batch} x {seq}, fp32, fresh processes, "
         f"alternating: median of {reps}", ["machine", "threads", "ms/step"], rows,
         ["beside another job: a second process training the same model on every core (torch's default)"])
    return results


def bench_allocator(args):
    if device_type != "cpu":
        return skipped("the glibc allocator matters on CPU only")
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        return skipped("no glibc here")
    reps = reps_for(args, 3)
    shape, seq, batch = (TINY, 32, 2) if args.quick else (SMALL, 256, 8)
    dtype = pick_dtype("auto", "cpu")  # what train_sft.py runs by default
    times = {"default": [], "tuned": []}
    for _ in range(reps):
        for setting in times:
            spec = {"setting": setting, "shape": shape, "seq": seq, "batch": batch, "dtype": dtype,
                    "steps": 2 if args.quick else 4, "threads": torch.get_num_threads()}
            times[setting].append(step_probe(spec)["step_s"])
    tokens = batch * seq
    ratio = speedup(times, "tuned", "default")
    labels = {"default": "glibc default", "tuned": "tune_cpu_allocator()"}
    rows = [[labels[name], f"{tokens / med(ts):,.0f}", f"{1000 * med(ts):,.1f}"] for name, ts in times.items()]
    show(f"train step {shape['n_layer']}L/{shape['n_embd']}d, seq {seq}, batch {batch}, {dtype}, each setting in "
         f"fresh processes, alternating: median of {reps} processes", ["malloc", "tokens/s", "ms/step"], rows,
         [f"tuned/default: {ratio:.2f}x", "tuned = M_MMAP_MAX 0 (no mmap per allocation), M_TRIM_THRESHOLD never"])
    return {name: {"tokens_per_s": tokens / med(ts), "step_s": med(ts)} for name, ts in times.items()} | {
        "tuned_over_default": ratio}


# ----------------------------------------------------------------------------------------------------------
# (h) the main job on a GPU: the real train_sft.py configs/gpt2_alpaca.py, its speed, and the whole recipe's time

PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]  # dense, datasheet
MAIN_JOB = os.path.join(ROOT, "configs", "gpt2_alpaca.py")
# --quick: a tiny model on short rows, to run the measuring code (not to measure a speed)
TINY_JOB = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--batch_size=2", "--block_size=256", "--eval_iters=2"]


def recipe() -> dict:
    """configs/gpt2_alpaca.py's settings (a config file is plain assignments of literals)."""
    with open(MAIN_JOB) as f:
        tree = ast.parse(f.read())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def stream(cmd: list[str], env: dict | None = None, deadline: float | None = None) -> tuple[int, list, float]:
    """Run cmd from the repository root, its output echoed as it comes (a hang shows where; progress bars'
    lines are left out) and kept as (seconds since the start, line); killed at `deadline` (a time.time()),
    when its exit code is 124. A thread reads the output, so a silent process cannot outlive the deadline.
    Returns the exit code, the lines and the wall seconds to the process's end."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines = []

    def read():
        for line in proc.stdout:  # (a progress bar's \r ends a line here too)
            lines.append((time.perf_counter() - start, line))
            if "step/s" not in line and "?step" not in line and line.strip():
                print(f"    | {line.rstrip()}", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = 124
        lines.append((time.perf_counter() - start, "(stopped: past its deadline)\n"))
    wall_s = time.perf_counter() - start
    reader.join(timeout=10)
    return code, lines, wall_s


def run_main_job(data_dir, out_dir, steps, extra=(), env=None, full=False) -> dict:
    """train_sft.py configs/gpt2_alpaca.py as a user runs it, from a random GPT-2 124M (init_from=scratch: the
    weights' values do not change the speed), its output streamed. steps steps, evaluating at the first and
    the last only, unless full: the recipe as it is. Returns the wall seconds, the seconds to the end of its
    set-up (its "out_dir:" line: imports, data, model), its metrics.jsonl records and its output."""
    cmd = [sys.executable, os.path.join(ROOT, "train_sft.py"), MAIN_JOB, "--init_from=scratch",
           f"--data_dir={data_dir}", f"--out_dir={out_dir}"]
    if not full:
        cmd += [f"--max_iters={steps}", f"--eval_interval={steps}", f"--checkpoint_interval={steps}",
                "--log_interval=5"]
    cmd += list(extra)
    print("  $ " + " ".join(c.replace(ROOT + os.sep, "") for c in cmd[1:]), flush=True)
    code, lines, wall_s = stream(cmd, env)
    if code != 0:
        raise errors.UserError(f"the main job failed (exit {code}); its output is above")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    setup_s = next((t for t, line in lines if line.startswith("out_dir:")), None)
    return {"wall_s": wall_s, "setup_s": setup_s, "records": records,
            "output": "".join(line for _, line in lines)}


def main_job_figures(run: dict, model: GPT, peak: float) -> dict:
    """What a run's metrics say: the steady step (its last two thirds), the evaluations, and the seconds before
    the steady state that compiling (or an eager run's warm-up) cost, with MFU counted two ways."""
    steps = [r for r in run["records"] if "loss" in r]
    evals = [r for r in run["records"] if "val_loss" in r]
    first, last = steps[len(steps) // 3], steps[-1]
    seconds = last["time_s"] - first["time_s"]
    step_s = seconds / (last["iter"] - first["iter"])
    tokens_per_s = (last["tokens"] - first["tokens"]) / seconds
    targets_per_s = (last["targets_per_s"] * last["time_s"] - first["targets_per_s"] * first["time_s"]) / seconds
    cfg = model.config
    six_n = 6 * model.num_params()
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size  # every position of the row: no mask counted
    out = run["output"]
    return {"step_s": step_s, "tokens_per_s": tokens_per_s, "targets_per_s": targets_per_s,
            "mfu_6n": tokens_per_s * six_n / peak, "mfu_6n_attention": tokens_per_s * (six_n + attention) / peak,
            "setup_s": run["setup_s"], "first_eval_s": evals[0]["eval_s"], "eval_s": evals[-1]["eval_s"],
            # the first logged steps, less their steady time and the step-0 evaluation: compiling the training
            # graph (and the evaluation's, in first_eval_s), or an eager run's warm-up
            "compile_s": steps[0]["time_s"] - evals[0]["eval_s"] - steps[0]["iter"] * step_s,
            "wall_s": run["wall_s"],
            "peak_gib": float(out.split("peak GPU memory: ")[1].split(" GiB")[0]) if "peak GPU" in out else None,
            "graphs": out.split("torch.compile: ")[1].split("\n")[0] if "torch.compile: " in out else None,
            "attention": out.split("attention ")[1].split(")")[0] if "attention " in out else None}


def time_checkpoint_write(shape: dict, dev: str, folder: str) -> dict:
    """Seconds to write a checkpoint of a model of this shape through checkpoint.save (fsync'd), with AdamW's
    state (ckpt.pt, resumable) and without (best.pt), and their sizes."""
    import checkpoint

    model = GPT(GPTConfig(**shape)).to(dev)
    optimizer = model.configure_optimizer(0.0, 5e-5, (0.9, 0.999), common.device_type(dev))
    model(*random_batch(model.config.vocab_size, 1, 8, dev))[1].backward()
    optimizer.step()  # AdamW's two moments now exist
    fields = dict(config={}, meta={}, script="train_sft.py", data_dir="", iter_num=1, best_val_loss=0.0,
                  base_model="scratch")
    resume = dict(optimizer=optimizer.state_dict(), scaler={}, rng_state=[], batches_drawn={}, tokens=0)
    out = {}
    for name, extra in (("ckpt", {"resume": resume}), ("best", {})):
        path = os.path.join(folder, f"{name}.pt")
        sync(common.device_type(dev))
        t0 = time.perf_counter()
        checkpoint.save(path, model, **fields, **extra)
        out[f"{name}_s"], out[f"{name}_gb"] = time.perf_counter() - t0, os.path.getsize(path) / 1e9
        os.remove(path)
    return out


def projected_recipe_s(fig: dict, write: dict, settings: dict) -> tuple[float, dict]:
    """The whole recipe's seconds from a short run's figures: set-up, compiling, max_iters steady steps, an
    evaluation every eval_interval steps and at the end (eval_iters batches of each split), ckpt.pt every
    checkpoint_interval steps and at the end, and best.pt at every evaluation that improves (counted as all).
    Returns the total and its parts."""
    max_iters, every_eval = settings["max_iters"], settings["eval_interval"]
    every_ckpt = settings.get("checkpoint_interval") or every_eval
    n_evals = len(range(0, max_iters, every_eval)) + 1
    parts = {"set-up": fig["setup_s"],
             "compiling (training and evaluation graphs)": fig["compile_s"] + fig["first_eval_s"] - fig["eval_s"],
             f"{max_iters} steps": max_iters * fig["step_s"],
             f"{n_evals} evaluations": n_evals * fig["eval_s"],
             f"{len(range(every_ckpt, max_iters, every_ckpt)) + 1} ckpt.pt writes":
                 (len(range(every_ckpt, max_iters, every_ckpt)) + 1) * write["ckpt_s"],
             f"{n_evals - 1} best.pt writes (at most)": (n_evals - 1) * write["best_s"]}
    return sum(parts.values()), parts


def profile_steps(data_dir, shape, dev, n=5, batch_size=None) -> dict:
    """The main job's step (compiled, packed rows of the data, bf16 autocast on a GPU) profiled for n steps
    after a warm-up: the host's ms a step (launching the work: the time to enqueue n steps without waiting,
    over n) against the GPU's (its kernels' time, from torch.profiler), and the wall ms a step."""
    dev_type = common.device_type(dev)
    settings = recipe()
    flex = "flex" if dev_type == "cuda" else "sdpa"
    model = GPT(GPTConfig(**shape, attention=flex, loss_path="fused")).to(dev)
    optimizer = model.configure_optimizer(0.0, settings["learning_rate"], (0.9, 0.999), dev_type)
    compiled = torch.compile(model) if dev_type == "cuda" else model
    meta = data.read_meta(data_dir)
    train = data.read_examples(data_dir, meta, "train", model.config.block_size, verbose=False)
    packed = data.pack(train, model.config.block_size, seed=1337)
    rows = np.arange(batch_size or settings["batch_size"]) % (len(packed["starts"]) - 1)
    X, Y, P = (torch.from_numpy(a).to(dev) for a in data.packed_batch(train, packed, rows, model.config.block_size,
                                                                       meta["end_token"]))
    amp = autocast("bfloat16" if dev_type == "cuda" else "float32", dev_type)

    def step():
        with amp:
            loss = compiled(X, Y, P)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3 if n > 2 else 1):  # warm-up (compiling, on a GPU)
        step()
    sync(dev_type)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    host_s = time.perf_counter() - t0
    sync(dev_type)
    wall_s = time.perf_counter() - t0
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if dev_type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync(dev_type)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:5]
    return {"host_ms": 1000 * host_s / n, "gpu_ms": gpu_us / 1000 / n if kernels else None,
            "wall_ms": 1000 * wall_s / n, "top_kernels": [(e.key, e.self_device_time_total / 1000 / n) for e in top]}


def bench_cuda(args):
    """(h) The main job on a GPU: the real train_sft.py with configs/gpt2_alpaca.py, compiled (a cold compile
    cache, then a warm one) and eager. --quick on a CPU runs the same measurement on a tiny model, eager."""
    on_gpu = device_type == "cuda"
    if not on_gpu and not args.quick:
        return skipped("no CUDA device (on a CPU, --quick runs this section on a tiny model)")
    why_not = alpaca_ready() if args.data_dir is None else None
    if why_not:
        return skipped(why_not)
    name = torch.cuda.get_device_name() if on_gpu else machine()["cpu"]
    peak = next((flops for key, flops in PEAK_BF16 if all(w in name for w in key.split())), None)
    source = f"{name}, datasheet, dense bf16"
    if peak is None:
        dtype = "bfloat16" if on_gpu else "float32"
        peak = matmul_peak([dtype], 8192 if on_gpu else 512, 10 if on_gpu else 2, device)[dtype]
        source = f"{name}, measured {dtype} matmul"
    steps = 10 if args.quick else args.steps
    tmp = tempfile.mkdtemp(prefix="bench-h-")
    atexit.register(shutil.rmtree, tmp, True)
    data_dir = args.data_dir
    if data_dir is None:
        import prepare_alpaca

        data_dir = os.path.join(tmp, "alpaca")
        quietly(prepare_alpaca.prepare, inputs=[ALPACA_5000], out_dir=data_dir)
    shape = dict(n_layer=2, n_head=2, n_embd=64, block_size=256) if args.quick else GPT2_124M
    extra = []
    if args.quick:  # a tiny model: the measurement's code, not a speed
        extra = TINY_JOB + ([] if on_gpu else ["--device=cpu", "--dtype=float32", "--threads=1"])
    with torch.device("meta"):
        model = GPT(GPTConfig(**shape))
    # compiled twice on one fresh cache: the first compiles everything (cold), the second reuses it (warm)
    cache = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor"), "TRITON_CACHE_DIR": os.path.join(tmp, "triton")}
    runs = {"compiled, cold cache": (["--compile=True"], cache), "compiled, warm cache": (["--compile=True"], cache),
            "eager": (["--compile=False"], {})}
    if not on_gpu:  # a CPU compiles for minutes: --quick times the eager run only
        runs = {"eager": runs["eager"]}
    figures = {}
    for key, (flags, env) in runs.items():
        print(f"\n  ({key})", flush=True)
        run = run_main_job(data_dir, os.path.join(tmp, key.replace(", ", "_").replace(" ", "_")), steps,
                           [*extra, *flags], env)
        figures[key] = main_job_figures(run, model, peak)
    write = time_checkpoint_write(shape, device, tmp)
    settings = recipe()
    compiled = figures.get("compiled, warm cache", figures["eager"])
    total_s, parts = projected_recipe_s({**compiled, **{k: figures.get("compiled, cold cache", compiled)[k]
                                                        for k in ("compile_s", "first_eval_s")}}, write, settings)
    os.environ.update(cache)  # the profile compiles in this process: from the warm cache
    profile = profile_steps(data_dir, shape, device, *((2, 2) if args.quick else ()))
    out = {"device": name, "peak_flops": peak, "peak_source": source, "steps": steps, "data_dir": data_dir,
           "runs": figures, "checkpoint_write": write, "projected_recipe_s": total_s, "projected_parts": parts,
           "profile": profile}
    if "compiled, warm cache" in figures:
        out["compiled_over_eager"] = figures["compiled, warm cache"]["tokens_per_s"] / figures["eager"]["tokens_per_s"]
    rows = [[key, f"{f['tokens_per_s']:,.0f}", f"{f['targets_per_s']:,.0f}", f"{1000 * f['step_s']:.1f}",
             f"{100 * f['mfu_6n']:.1f}% / {100 * f['mfu_6n_attention']:.1f}%", f"{f['setup_s']:.1f}",
             f"{f['compile_s'] + f['first_eval_s'] - f['eval_s']:.1f}", f"{f['eval_s']:.2f}",
             "-" if f["peak_gib"] is None else f"{f['peak_gib']:.1f}", f["graphs"] or "-", f["attention"] or "-"]
            for key, f in figures.items()]
    cfg = model.config
    notes = [f"peak {peak / 1e12:.1f} TFLOP/s ({source}); MFU = tokens/s x 6N / peak, and x (6N + 12 L d T) / "
             f"peak, N = {model.num_params() / 1e6:.1f}M weights, L = {cfg.n_layer}, d = {cfg.n_embd}, T = "
             f"{cfg.block_size} (attention counted over whole rows, though the document mask skips most of it)",
             f"steady = the last two thirds of {steps} steps; set-up = process start to the training loop; compile "
             f"= the seconds before the steady state (the first evaluation's graph included), less a warm one",
             f"checkpoint writes here: ckpt.pt {write['ckpt_gb']:.2f} GB in {write['ckpt_s']:.1f} s, best.pt "
             f"{write['best_gb']:.2f} GB in {write['best_s']:.1f} s",
             f"projected recipe (max_iters {settings['max_iters']}, the 52K records' 3 epochs, cold compile): "
             f"{total_s / 60:.1f} min = " + " + ".join(f"{k} {v:.0f} s" for k, v in parts.items()),
             f"profile of the step ({'compiled' if on_gpu else 'eager'}): host {profile['host_ms']:.1f} ms a step to "
             f"launch it, GPU "
             + (f"{profile['gpu_ms']:.1f} ms" if profile["gpu_ms"] is not None else "-")
             + f", wall {profile['wall_ms']:.1f} ms"]
    if "compiled_over_eager" in out:
        notes.append(f"compiled (warm) / eager: {out['compiled_over_eager']:.2f}x tokens/s")
    show(f"{name}: train_sft.py configs/gpt2_alpaca.py, random GPT-2 {'tiny' if args.quick else '124M'}, {steps} "
         f"steps", ["run", "tokens/s", "targets/s", "ms/step", "MFU 6N / +attn", "set-up s", "compile s", "eval s",
                    "peak GiB", "torch.compile", "attention"], rows, notes)
    if args.full:
        out["full_recipe"] = bench_full_recipe(ALPACA_5000, tmp, extra)
    return out


def bench_full_recipe(alpaca: str, tmp: str, extra: list = ()) -> dict:
    """--full: the recipe timed as it is, on 52,002 records: the alpaca file's, repeated to as many (the full
    Alpaca set's count; with the sample, the same steps and shapes, not its text). Preparing is not timed."""
    import prepare_alpaca

    with open(alpaca) as f:
        records = json.load(f)
    big = os.path.join(tmp, "alpaca_52002.json")
    with open(big, "w") as f:
        json.dump((records * (52002 // len(records) + 1))[:52002], f)
    data_dir = os.path.join(tmp, "alpaca_52002")
    quietly(prepare_alpaca.prepare, inputs=[big], out_dir=data_dir)
    print("\n  (the full recipe, on 52,002 records)", flush=True)
    run = run_main_job(data_dir, os.path.join(tmp, "full"), 0, extra, full=True)
    steps = [r for r in run["records"] if "loss" in r]
    show("the full recipe, timed", ["records", "steps", "wall min"],
         [[f"52,002 (from {os.path.basename(alpaca)})", steps[-1]["iter"], f"{run['wall_s'] / 60:.1f}"]])
    return {"wall_s": run["wall_s"], "steps": steps[-1]["iter"]}


# ----------------------------------------------------------------------------------------------------------
# (i) prepare_alpaca.py at the size people fine-tune on: a generated 1M-conversation JSONL


def generated_conversations(n, seed=1337):
    """n conversations of 1 to 3 Alpaca exchanges drawn from the 5,000-record sample, half of them opened by a
    system message: the shape of UltraChat or OpenHermes, ~0.9 KB a record on disk."""
    import random  # (here: the imports at the top are section (h)'s business)

    with open(ALPACA_5000, encoding="utf-8") as f:
        records = [r for r in json.load(f) if r["instruction"].strip() and r["output"].strip()]
    rng = random.Random(seed)
    for _ in range(n):
        conversation = [{"role": "system", "content": "You are a helpful assistant."}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            r = records[rng.randrange(len(records))]
            user = r["instruction"] + ("\n\n" + r["input"] if r["input"].strip() else "")
            conversation += [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        yield conversation


PREPARE_PROBE = """
import json, resource, sys, time
import numpy as np
import prepare_alpaca
start = time.perf_counter()
meta = prepare_alpaca.prepare(inputs=[sys.argv[1]], out_dir=sys.argv[2], workers=int(sys.argv[3]))
seconds = time.perf_counter() - start
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
tokens = sum(int(np.fromfile(f"{sys.argv[2]}/{split}_offsets.bin", dtype=np.int64)[-1]) for split in ("train", "val"))
print(json.dumps({"s": seconds, "records": meta["records"], "tokens": tokens, "own_peak": hwm,
                  "child_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def run_prepare_probe(path, out_dir, workers):
    """prepare_alpaca.prepare in a fresh process (the peak only ever grows: this one holds torch). Its peak
    memory, every worker counted: its own VmHWM plus, for each worker, the largest child's ru_maxrss (an upper
    bound); and, with psutil, the largest sum of the whole tree's RSS seen every 50 ms."""
    proc = subprocess.Popen([sys.executable, "-c", PREPARE_PROBE, path, out_dir, str(workers)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampled = None
    try:
        import psutil

        parent, sampled = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                sampled = max(sampled, sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]))
            time.sleep(0.05)
    except ImportError:
        pass
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"prepare_alpaca.prepare failed (exit {proc.returncode})")
    return {**json.loads(out.strip().split("\n")[-1]), "sampled_tree_peak": sampled}


def bench_prepare_at_scale(args):
    why_not = alpaca_ready() if sys.platform == "linux" else "reads Linux's /proc/self/status"
    if why_not:
        return skipped(why_not)
    import itertools

    import chat_template

    n = 1000 if args.quick else 1_000_000
    n_hf = 100_000  # HF datasets.map is timed on the first n_hf (not in --quick)
    enc = chat_template.get_tokenizer()
    workers = os.cpu_count() or 1  # (what prepare_alpaca picks for an input over 16 MB)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "out") if os.path.isdir(os.path.join(ROOT, "out"))
                                     else None) as tmp:  # deleted afterwards, the ~0.9 GB file with it
        path = os.path.join(tmp, "chats.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"messages": c}) + "\n" for c in generated_conversations(n))
        size = os.path.getsize(path)
        # The floor: the same message contents, one bare single-threaded tiktoken call per 100,000 of them (one
        # call for all would hold ~180M token ids as Python ints, ~7 GB), only the calls timed.
        floor_s = floor_tokens = 0
        contents = (m["content"] for c in generated_conversations(n) for m in c)
        while batch := list(itertools.islice(contents, 100_000)):
            t0 = time.perf_counter()
            floor_tokens += sum(map(len, enc.encode_ordinary_batch(batch, num_threads=1)))
            floor_s += time.perf_counter() - t0
        ours = run_prepare_probe(path, os.path.join(tmp, "prepared"), workers)
        hf = {"skipped": "HF datasets.map: not in --quick"} if args.quick else bench_hf_datasets_map(path, n_hf, tmp)
    peak = ours["own_peak"] + workers * ours["child_peak"]
    rows = [[f"prepare_alpaca.prepare ({workers} worker processes)", f"{n / ours['s']:,.0f}",
             f"{ours['tokens'] / ours['s']:,.0f}", f"{ours['s']:.1f}", f"{peak / 2**30:.2f}"],
            ["bare encode_ordinary_batch(contents, num_threads=1)", f"{n / floor_s:,.0f}",
             f"{floor_tokens / floor_s:,.0f}", f"{floor_s:.1f}", ""]]
    if "s" in hf:
        rows.append([f"HF datasets.map, TRL's tokenisation (first {n_hf:,})", f"{n_hf / hf['s']:,.0f}", "",
                     f"{hf['s'] * n / n_hf:.1f} (scaled)", ""])
    notes = [f"{n:,} generated conversations, {size / 1e6:,.0f} MB of JSONL; one run each (not interleaved: minutes)",
             f"prepare / floor: {ours['s'] / floor_s:.2f}x; prepare's tokens include the template's (the floor's: "
             f"the contents alone, {floor_tokens:,})",
             f"peak memory: prepare's process {ours['own_peak'] / 2**20:,.0f} MiB + {workers} x its largest worker "
             f"{ours['child_peak'] / 2**20:,.0f} MiB" + (f"; the tree's largest sampled sum "
                                                         f"{ours['sampled_tree_peak'] / 2**20:,.0f} MiB"
                                                         if ours["sampled_tree_peak"] else ""),
             hf.get("skipped") or f"HF: Dataset.from_json + map(num_proc={workers}) with trl.data_utils._tokenize "
                                  "(ChatML with {% generation %}: ids and assistant masks, as ours)"]
    show(f"prepare_alpaca.py on {n:,} conversations vs the bare tokenizer", ["", "records/s", "tokens/s", "s",
                                                                            "peak GiB"], rows, notes)
    return {"conversations": n, "jsonl_bytes": size, "prepare": {**ours, "peak_all_processes": peak,
                                                                 "workers": workers},
            "floor": {"s": floor_s, "tokens": floor_tokens}, "prepare_over_floor": ours["s"] / floor_s, "hf": hf}


HF_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' %}"
             "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}"
             "{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}")


def bench_hf_datasets_map(path, n_hf, tmp):
    """What a TRL user runs: the JSONL into a datasets.Dataset, then map with TRL's own tokenising helper."""
    import itertools

    try:
        import datasets
        from transformers import GPT2TokenizerFast
        from trl.data_utils import _tokenize
    except ImportError as e:
        return {"skipped": f"HF datasets.map: not run ({e.name} is not installed)"}
    tokenizer = GPT2TokenizerFast(vocab_file=os.path.join(SHARED, "gpt2", "encoder.json"),
                                  merges_file=os.path.join(SHARED, "gpt2", "vocab.bpe"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = HF_CHATML
    subset = os.path.join(tmp, "hf_subset.jsonl")
    with open(path, encoding="utf-8") as f, open(subset, "w", encoding="utf-8") as out:
        out.writelines(itertools.islice(f, n_hf))
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    dataset = datasets.Dataset.from_json(subset, cache_dir=os.path.join(tmp, "hf_cache"))
    mapped = dataset.map(lambda ex: _tokenize(tokenizer, ex["messages"], return_assistant_tokens_mask=True),
                         num_proc=os.cpu_count(), remove_columns=["messages"])
    seconds = time.perf_counter() - t0
    return {"s": seconds, "records": len(mapped), "datasets": datasets.__version__}


# ----------------------------------------------------------------------------------------------------------

def bench_checkpoint_write(args):
    """(j) The seconds a checkpoint write of GPT-2 124M costs a run: with AdamW's state (ckpt.pt, resumable)
    and without (best.pt), through checkpoint.save (fsync'd) to a temporary folder on this machine's disk."""
    shape = dict(n_layer=2, n_head=2, n_embd=64) if args.quick else GPT2_124M
    reps = reps_for(args, 3, quick=1)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "out") if os.path.isdir(os.path.join(ROOT, "out"))
                                     else None) as tmp:
        runs = [time_checkpoint_write(shape, device, tmp) for _ in range(reps)]
    out = {k: med([r[k] for r in runs]) for k in runs[0]}
    settings = recipe()
    every = settings.get("checkpoint_interval") or settings["eval_interval"]
    n_ckpt = len(range(every, settings["max_iters"], every)) + 1
    rows = [["ckpt.pt (model + AdamW)", f"{out['ckpt_gb']:.2f}", f"{out['ckpt_s']:.2f}"],
            ["best.pt (model only)", f"{out['best_gb']:.2f}", f"{out['best_s']:.2f}"]]
    show(f"checkpoint writes, {'tiny' if args.quick else 'GPT-2 124M'}: median of {reps}", ["file", "GB", "s"], rows,
         [f"configs/gpt2_alpaca.py writes ckpt.pt {n_ckpt} times (checkpoint_interval {every}): "
          f"{n_ckpt * out['ckpt_s']:.1f} s on this disk"])
    return out


SECTIONS = {
    "a": ("train step: ours vs Hugging Face GPT2LMHeadModel", bench_train_step),
    "b": ("generation: KV cache, no cache, Hugging Face", bench_generation),
    "c": ("SFT loader: share of non-pad and target tokens", bench_loader),
    "d": ("prepare time for Alpaca", bench_prepare),
    "e": ("peak memory of SFT train steps, full vs LoRA", bench_memory),
    "f": ("AdamW: default vs foreach vs fused", bench_adamw),
    "g": ("allocator: glibc default vs tune_cpu_allocator()", bench_allocator),
    "h": ("GPU: the main job, train_sft.py configs/gpt2_alpaca.py, compiled and eager", bench_cuda),
    "i": ("prepare_alpaca.py at scale: 1M generated conversations vs the bare tokenizer", bench_prepare_at_scale),
    "j": ("checkpoint writes: GPT-2 124M with and without AdamW's state", bench_checkpoint_write),
    "k": ("threads: 1, every core, and the trainers' default, idle and beside another job", bench_threads),
}


def machine():
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    gpu = torch.cuda.get_device_name() if device_type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(), "gpu": gpu,
            "device": device, "torch": torch.__version__, "transformers": hf_version,
            "python": platform.python_version(), "date": datetime.date.today().isoformat()}


def main():
    global device, device_type
    errors.report_user_errors()
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 reps: a smoke test")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. a,b,f")
    parser.add_argument("--reps", type=int, default=0, help="timed repetitions (default: per section)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--steps", type=int, default=100, help="(h): steps of each main-job run")
    parser.add_argument("--full", action="store_true", help="(h): also time the whole recipe (52K records)")
    parser.add_argument("--data_dir", help="(h): prepared SFT data (default: the 5,000-record Alpaca sample)")
    parser.add_argument("--_memory_probe", help=argparse.SUPPRESS)  # internal: section (e)'s fresh process
    parser.add_argument("--_alloc_probe", help=argparse.SUPPRESS)  # internal: section (g)'s fresh processes
    args = parser.parse_args()
    if args._memory_probe:
        return memory_probe(json.loads(args._memory_probe))
    if args._alloc_probe:
        return alloc_probe(json.loads(args._alloc_probe))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    if args.reps < 0:
        parser.error("--reps must be at least 1")

    # All cores, as training would use them. Not in --quick: tiny tensors gain nothing from threads, and on a
    # busy machine OpenMP's waiting turns each ~10 us op into milliseconds (the smoke test would crawl).
    torch.set_num_threads(1 if args.quick else os.cpu_count() or 1)
    device = pick_device(args.device)
    device_type = common.device_type(device)
    if device_type == "cpu":
        tune_cpu_allocator()  # as the trainers do; section (g) compares it with the default
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainers do
    info = machine()
    print(f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), device {device}, "
          f"dtype auto = {pick_dtype('auto', device_type)}, torch {info['torch']}, transformers {info['transformers']}"
          f"{', QUICK (tiny shapes)' if args.quick else ''}")
    results = {"machine": info, "quick": args.quick, "reps": args.reps or None}
    for key in only:
        title, fn = SECTIONS[key]
        print(f"\n=== ({key}) {title} ===")
        SUMMARY.extend([f"### ({key}) {title}", ""])
        t0 = time.perf_counter()
        results[key] = fn(args)
        print(f"({key}: {time.perf_counter() - t0:.1f} s)")

    print("\n" + "-" * 100 + "\n\n## Benchmarks (bench.py" + (" --quick" if args.quick else "") + ")\n")
    print(f"{info['cpu']}, {info['cores']} cores, native bf16: {'yes' if info['native_bf16'] else 'no'}"
          f"{', ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}, transformers {info['transformers']}, "
          f"Python {info['python']}; {info['date']}. Interleaved repetitions (in one process, except (e) and "
          "(g), which need fresh ones), medians.\n")
    print("\n".join(SUMMARY))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
