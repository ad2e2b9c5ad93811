"""
Supervised fine-tuning (SFT): teach a pretrained GPT to follow instructions.

This is train_pretrain.py with one section changed: the data loader. The model, the loss (next-token
cross-entropy from model.py), the optimizer and the loop are the same lines; `diff train_pretrain.py
train_sft.py` shows it. What SFT changes is the data: whole instruction/response examples instead of
random windows of a text, and targets of -100 on the prompt, so only the responses are learned.

    python train_sft.py configs/gpt2_alpaca.py                     # GPT-2 124M on Alpaca (a GPU)
    python train_sft.py configs/tiny_alpaca.py                     # the tiny CPU model, after tiny_shakespeare
    python train_sft.py configs/gpt2_alpaca.py --batch_size=4      # any setting can be overridden
    torchrun --standalone --nproc_per_node=8 train_sft.py configs/gpt2_alpaca.py --gradient_accumulation_steps=1
"""

import json
import math
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from configurator import load_config
from model import GPT, GPTConfig, pick_device, pick_dtype, tune_cpu_allocator

# ----------------------------------------------------------------------------------------------------------
# Settings: the defaults (the same in both training scripts); a run's own values live in configs/.
out_dir = "out"
init_from = "scratch"  # 'scratch', 'resume' (from out_dir), 'gpt2' (-medium/-large/-xl), an HF dir, or our ckpt
data_dir = ""  # '' = the data loader's own default: data/shakespeare (pretraining) or data/alpaca (SFT)
eval_interval = 250  # evaluate (and checkpoint) every this many steps
eval_iters = 20  # batches per evaluation
log_interval = 10  # steps between metrics.jsonl lines
always_save_checkpoint = True  # write ckpt.pt at every evaluation (best.pt follows the best val loss anyway)
eval_only = False
seed = 1337
# the model, when init_from='scratch'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304  # GPT-2's 50257 plus room for chat tokens, padded to a multiple of 64
dropout = 0.0
bias = True
# optimization
batch_size = 8  # examples (or windows) per micro-batch, per process
gradient_accumulation_steps = 1  # micro-batches per step and process: a step sees batch_size x this x processes
max_iters = 1000
learning_rate = 6e-4
min_lr = 6e-5  # the cosine schedule ends here
warmup_iters = 100
lr_decay_iters = 0  # 0 = max_iters
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 = off
# system
device = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # 'auto' (bf16 where the hardware has it), 'float32', 'bfloat16', 'float16'
compile = False  # torch.compile the model
config = load_config({k: v for k, v in globals().items() if not k.startswith("_") and
                      isinstance(v, (int, float, bool, str))}, sys.argv[1:])
globals().update(config)

# ----------------------------------------------------------------------------------------------------------
# Processes and devices: one process per GPU under torchrun (DDP), else a single process.
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    ddp_rank, ddp_local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    ddp_world_size = int(os.environ["WORLD_SIZE"])
    device = pick_device(device)
    if device.startswith("cuda"):
        device = f"cuda:{ddp_local_rank}"
        torch.cuda.set_device(device)
    else:  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
else:
    ddp_rank, ddp_local_rank, ddp_world_size = 0, 0, 1
    device = pick_device(device)
master_process = ddp_rank == 0
device_type = "cuda" if device.startswith("cuda") else device
dtype = pick_dtype(dtype, device_type)
torch.manual_seed(seed + ddp_rank)
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
if device_type == "cpu":
    tune_cpu_allocator()
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
    print(f"device {device}, dtype {dtype}, {ddp_world_size} process(es)")

# ----------------------------------------------------------------------------------------------------------
# The model: from scratch, from GPT-2 (or any HF GPT-2 checkpoint), or from a checkpoint of ours.
if ddp and ddp_local_rank != 0:
    dist.barrier()  # one process per machine downloads GPT-2 first; the others then read it from the cache
checkpoint = None
if init_from == "resume" or init_from.endswith(".pt") or os.path.exists(os.path.join(init_from, "ckpt.pt")):
    ckpt_path = {"resume": os.path.join(out_dir, "ckpt.pt")}.get(init_from, init_from)
    if os.path.isdir(ckpt_path):
        ckpt_path = os.path.join(ckpt_path, "ckpt.pt")
    if master_process:
        print(f"loading {ckpt_path}")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model_args = checkpoint["model_args"] | ({} if init_from == "resume" else {"dropout": dropout})
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(checkpoint["model"])
elif init_from == "scratch":
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                          vocab_size=vocab_size, dropout=dropout, bias=bias))
else:
    model = GPT.from_pretrained(init_from, vocab_size=vocab_size, dropout=dropout)
if ddp and ddp_local_rank == 0:
    dist.barrier()
block_size = model.config.block_size  # a loaded model brings its own context window
model.to(device)
if master_process:
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, block_size {block_size}")


def to_device(array):
    tensor = torch.from_numpy(array)
    if device_type == "cuda":  # pinned memory lets the copy overlap with compute
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def run_prepare(args):
    """Data on demand: make the prepared data this run needs, so the main command works on a fresh clone."""
    if ddp_local_rank == 0:  # once per machine: nodes need not share a filesystem
        print(f"prepared data not found; running: python {' '.join(args)}")
        if subprocess.run([sys.executable, *args]).returncode != 0:
            raise SystemExit(f"python {' '.join(args)} failed (its message is above); fix that and run again")
    if ddp:
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------
# DATA LOADER: SFT (the only section that differs from train_pretrain.py)
# The data is a set of separate examples from prepare_alpaca.py: token ids, a loss mask (1 = a response token
# or its end token) and per-example offsets. A batch is batch_size whole examples, padded to the longest one
# in the batch. The targets are the next tokens, as in pretraining, but -100 wherever the next token is
# prompt or padding, so the loss (and the gradient) comes from the responses alone.
data_dir = data_dir or os.path.join("data", "alpaca")
if not os.path.exists(os.path.join(data_dir, "meta.json")):
    run_prepare(["prepare_alpaca.py", "--out_dir", data_dir])
with open(os.path.join(data_dir, "meta.json")) as f:
    meta = json.load(f)  # template, system prompt, tokenizer facts: they travel with the checkpoint
if meta["vocab_size"] > model.config.vocab_size:
    raise SystemExit(f"the data uses {meta['vocab_size']} token ids; the model has only {model.config.vocab_size}")
data = {}
for split in ("train", "val"):
    if os.path.getsize(os.path.join(data_dir, f"{split}_ids.bin")) == 0:
        raise SystemExit(f"{data_dir}: the {split} split is empty (prepare it with --val_size above 0)")
    ids = np.memmap(os.path.join(data_dir, f"{split}_ids.bin"), dtype=np.uint16, mode="r")
    loss_mask = np.memmap(os.path.join(data_dir, f"{split}_mask.bin"), dtype=np.uint8, mode="r")
    offsets = np.fromfile(os.path.join(data_dir, f"{split}_offsets.bin"), dtype=np.int64)
    lengths = np.diff(offsets)
    usable = np.flatnonzero(lengths - 1 <= block_size)  # never truncate: it would cut off the end token
    if master_process and len(usable) < len(lengths):
        print(f"{split}: leaving out {len(lengths) - len(usable)} examples longer than block_size {block_size}")
    data[split] = (ids, loss_mask, offsets, lengths, usable)
step_size = batch_size * gradient_accumulation_steps * ddp_world_size  # examples in one optimizer step
epoch_orders = {}


def epoch_order(split, epoch):
    """An epoch's examples in training order: sorted by length within chunks of 256 micro-batches (little
    padding), cut into steps, the steps shuffled (so the loss curve does not trace the lengths). A function
    of (seed, epoch)."""
    if (split, epoch) not in epoch_orders:
        _, _, _, lengths, usable = data[split]
        if len(usable) < step_size:
            raise SystemExit(f"{split} has {len(usable)} examples; one step needs {step_size}")
        rng = np.random.default_rng((seed, epoch))
        order = rng.permutation(usable)[: len(usable) // step_size * step_size]
        chunk_size = 256 * batch_size * ddp_world_size  # bigger: less padding, but steps mix fewer lengths
        for start in range(0, len(order), chunk_size):
            chunk = order[start : start + chunk_size]
            order[start : start + chunk_size] = chunk[np.argsort(lengths[chunk], kind="stable")]
        steps = order.reshape(-1, step_size)
        epoch_orders[(split, epoch)] = steps[rng.permutation(len(steps))].reshape(-1)
    return epoch_orders[(split, epoch)]


def get_batch(split, i=None):
    """i=None: the next micro-batch of training. i=k: batch k of a fixed evaluation set (the same every time)."""
    ids, loss_mask, offsets, lengths, usable = data[split]
    if i is None:
        per_epoch = len(epoch_order(split, 0)) // (batch_size * ddp_world_size)  # micro-batches per epoch
        epoch, n = divmod(data_state[split], per_epoch)
        start = (n * ddp_world_size + ddp_rank) * batch_size  # each process takes its own slice of the step
        rows = epoch_order(split, epoch)[start : start + batch_size]
        data_state[split] += 1
    else:
        rows = usable[(i * batch_size + np.arange(batch_size)) % len(usable)]
    T = int(lengths[rows].max()) - 1  # pad to the batch's longest example (x and y are one token shorter)
    x = np.full((len(rows), T), meta["end_token"], dtype=np.int64)  # pad: after every real token, never a target
    y = np.full((len(rows), T), -100, dtype=np.int64)
    for r, example in enumerate(rows):
        a, b = offsets[example], offsets[example + 1]
        x[r, : b - a - 1] = ids[a : b - 1]
        y[r, : b - a - 1] = np.where(loss_mask[a + 1 : b] == 1, ids[a + 1 : b].astype(np.int64), -100)
    return to_device(x), to_device(y)


data_state = {"train": 0, "val": 0}  # micro-batches drawn: with the seed, the loader's whole position
# END OF DATA LOADER
# ----------------------------------------------------------------------------------------------------------

# The optimizer, and everything a resumed run needs back.
iter_num, best_val_loss = 0, float("inf")
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
if init_from == "resume":
    # The data loader's position is a count of micro-batches: it only means the same data in the same geometry.
    saved_geometry = (checkpoint["config"]["batch_size"], checkpoint["config"]["gradient_accumulation_steps"],
                      len(checkpoint["rng_state"]))  # one RNG state per process
    if saved_geometry != (batch_size, gradient_accumulation_steps, ddp_world_size):
        raise SystemExit(f"resume: the run used batch_size, gradient_accumulation_steps, processes = "
                         f"{saved_geometry}; resume it with the same")
    optimizer.load_state_dict(checkpoint["optimizer"])
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    data_state.update(checkpoint["data_state"])
    scaler.load_state_dict(checkpoint["scaler"])
    rng_state = checkpoint["rng_state"][ddp_rank]
    torch.set_rng_state(rng_state["cpu"])
    if device_type == "cuda" and "cuda" in rng_state:
        torch.cuda.set_rng_state(rng_state["cuda"])
checkpoint = None  # free the memory
raw_model = model
if compile:
    print("compiling the model (takes a minute)...")
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == "cuda" else None)


def get_lr(it):
    """Linear warmup, then cosine decay to min_lr."""
    decay_iters = lr_decay_iters or max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    """Mean loss over every target token of eval_iters fixed batches per split."""
    out = {}
    model.eval()
    for split in ("train", "val"):
        loss_sum, n_targets = 0.0, 0
        for k in range(eval_iters):
            X, Y = get_batch(split, k)
            with ctx:
                _, loss = model(X, Y)
            n = int((Y != -100).sum())
            loss_sum, n_targets = loss_sum + loss.item() * n, n_targets + n
        out[split] = loss_sum / max(n_targets, 1)
        if ddp:  # every process must take the same "is this the best?" decision, to the last bit
            loss_tensor = torch.tensor(out[split], device=device)
            dist.broadcast(loss_tensor, src=0)
            out[split] = loss_tensor.item()
    model.train()
    return out


def save_checkpoint(path, with_optimizer=True):
    """Atomic: a crash mid-write leaves the previous file intact, never a torn one. Call on every process."""
    rng_state = {"cpu": torch.get_rng_state()}
    if device_type == "cuda":
        rng_state["cuda"] = torch.cuda.get_rng_state().cpu()
    rng_states = [rng_state]
    if ddp and with_optimizer:  # each process has its own dropout stream; a collective: all processes come here
        rng_states = [None] * ddp_world_size
        dist.all_gather_object(rng_states, rng_state)
    if not master_process:
        return
    state = {"model": raw_model.state_dict(), "model_args": asdict(raw_model.config), "config": config,
             "iter_num": iter_num, "best_val_loss": best_val_loss, "meta": meta}
    if with_optimizer:
        state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), data_state=data_state,
                     rng_state=rng_states)
    with open(path + ".tmp", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename, so even a power cut leaves the old file or the new
    os.replace(path + ".tmp", path)


def evaluate_and_save():
    global best_val_loss
    losses = estimate_loss()  # the same fixed batches on every process, so every process agrees on "best"
    is_best = losses["val"] < best_val_loss
    best_val_loss = min(best_val_loss, losses["val"])
    if master_process:
        tqdm.write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                   + (" (best)" if is_best else ""))
        log_metrics({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]})
    if eval_only:
        return  # measuring must never overwrite the run's checkpoint
    if (always_save_checkpoint and iter_num > 0) or iter_num == max_iters:
        save_checkpoint(os.path.join(out_dir, "ckpt.pt"))  # the latest state: what init_from=resume continues
    if is_best and iter_num > 0:
        save_checkpoint(os.path.join(out_dir, "best.pt"), with_optimizer=False)


def log_metrics(record):
    with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------------------
# The training loop: the heartbeat. Next-token cross-entropy, gradient accumulation, clipping, AdamW.
if eval_only:
    evaluate_and_save()
    sys.exit(0)
pbar = tqdm(total=max_iters, initial=iter_num, disable=not master_process, unit="step", dynamic_ncols=True)
t0, tokens_seen, targets_seen = time.time(), 0, 0
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if iter_num % eval_interval == 0:
        evaluate_and_save()

    # Draw the whole step first, to know how many target tokens it holds across micro-batches and processes.
    batches = [get_batch("train") for _ in range(gradient_accumulation_steps)]
    n_step_targets = sum((Y != -100).sum() for _, Y in batches)
    if ddp:
        dist.all_reduce(n_step_targets)
    step_loss = torch.zeros((), device=device)
    for micro_step, (X, Y) in enumerate(batches):
        if ddp:  # sync gradients across processes only once, after the last micro-batch
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            _, loss = model(X, Y)
        # Weight each micro-batch by its share of the step's target tokens: the step then minimises the mean
        # over all its targets, exactly as one big batch would, however the targets fall into micro-batches.
        # (DDP averages gradients over processes, hence * ddp_world_size.)
        loss = loss * (Y != -100).sum() * ddp_world_size / n_step_targets.clamp(min=1)
        scaler.scale(loss).backward()
        step_loss += loss.detach() / ddp_world_size
        tokens_seen += X.numel() * ddp_world_size
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    targets_seen += int(n_step_targets)
    iter_num += 1

    if iter_num % log_interval == 0 or iter_num == max_iters:
        if ddp:
            dist.all_reduce(step_loss)
        elapsed = time.time() - t0
        record = {"iter": iter_num, "loss": step_loss.item(), "lr": lr,
                  "tokens_per_s": tokens_seen / elapsed, "targets_per_s": targets_seen / elapsed}
        if master_process:
            log_metrics(record)
        pbar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                         sup_tok_s=f"{record['targets_per_s']:.0f}")
    pbar.update(1)
pbar.close()
evaluate_and_save()
if master_process:
    print(f"done: {iter_num} steps, best val loss {best_val_loss:.4f}; checkpoints and metrics.jsonl in {out_dir}/")
if ddp:
    dist.destroy_process_group()
