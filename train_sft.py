"""
Supervised fine-tuning (SFT): teach a pretrained GPT to follow instructions.

This is train_pretrain.py with one section changed, the data loader; the model, loss, optimizer and
loop are the same lines (`diff train_pretrain.py train_sft.py`). What SFT changes is the data: whole
instruction/response examples, targets of -100 on the prompt, so only the answers are learned.

    python train_sft.py configs/gpt2_alpaca.py             # GPT-2 124M on Alpaca (a GPU)
    python train_sft.py configs/tiny_alpaca.py             # the tiny CPU model, after pretraining
    torchrun --standalone --nproc_per_node=4 train_sft.py configs/gpt2_alpaca.py --batch_size=3
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import checkpoint
import common
import data
import errors
import lora
from configurator import load_config
from errors import UserError
from model import PADDED_VOCAB_SIZE, GPTConfig

errors.report_user_errors()  # from here on, a UserError ends the run with one `error: ...` line

# --------------------------------------------------------------------------------------------------
# Settings: the defaults (the same in both training scripts); a run's own values live in configs/.
out_dir = "out"
init_from = "scratch"  # 'scratch', 'resume' (out_dir), 'gpt2' (-medium/-large/-xl), HF dir or ckpt
data_dir = ""  # '' = the loader's own default: data/shakespeare (pretraining), data/alpaca (SFT)
eval_interval = 250  # evaluate (and checkpoint) every this many steps
eval_iters = 20  # batches per evaluation
log_interval = 10  # steps between metrics.jsonl lines
always_save_checkpoint = True  # ckpt.pt at every evaluation (best.pt follows the best val loss)
eval_only = False
seed = 1337
# the model, when init_from='scratch'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = PADDED_VOCAB_SIZE  # GPT-2's 50257 tokens and room for the chat tokens
dropout = 0.0
bias = True
# LoRA (lora.py): freeze the model and train a low-rank update beside each target layer instead
lora_rank = 0  # 0 = off: train every weight
lora_alpha = 16.0  # the update is scaled by lora_alpha / lora_rank
lora_targets = "c_attn,c_proj,c_fc"  # the layers of each block that get adapters: attention, MLP
lora_dropout = 0.0
# optimization
batch_size = 8  # rows of block_size tokens per micro-batch, per process
gradient_accumulation_steps = 1  # micro-batches per step and process
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

# --------------------------------------------------------------------------------------------------
# The runtime: one process per GPU under torchrun (DDP), else a single process. See common.py.
runtime = common.setup_runtime(device, dtype, seed)
autocast = runtime.autocast()  # bf16/fp16 autocast, or nothing for fp32
if runtime.master:
    print(f"device {runtime.device}, dtype {runtime.dtype}, {runtime.world_size} process(es)")

# --------------------------------------------------------------------------------------------------
# The model: from scratch, from GPT-2 (or any HF GPT-2 checkpoint), or from a checkpoint of ours.
# The shape below is used from scratch. A loaded model keeps its own (a resumed one comes back as
# saved); a checkpoint of ours takes this run's dropout, GPT-2 its dropout and vocab_size.
model_config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                         vocab_size=vocab_size, dropout=dropout, bias=bias)
if lora_rank != 0:
    lora.check_settings(lora_rank, lora_alpha, lora_targets, lora_dropout)  # before gigabytes load
model, resumed = checkpoint.init_model(init_from, out_dir, model_config, runtime)
if init_from == "resume":  # resumed: its checkpoint. It must go on as it was, before anything loads
    checkpoint.check_resume(resumed, config, runtime.world_size, os.path.basename(__file__))
block_size = model.config.block_size  # a loaded model brings its own context window
if lora_rank != 0 and init_from != "resume":  # a resumed LoRA run's checkpoint brings its adapters
    lora.apply_lora(model, lora_rank, lora_alpha, lora_targets, lora_dropout)
model.to(runtime.device)
if runtime.master:
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, block_size {block_size}; "
          f"{lora.trainable_summary(model)}")


def to_device(array):
    tensor = torch.from_numpy(array)
    if runtime.device_type == "cuda":  # from page-locked memory, the copy overlaps with compute
        return tensor.pin_memory().to(runtime.device, non_blocking=True)  # (torch reuses buffers)
    return tensor.to(runtime.device)


# --------------------------------------------------------------------------------------------------
# DATA LOADER: SFT (the only section that differs from train_pretrain.py)
# The data: separate examples from prepare_alpaca.py, token ids and a loss mask (1 = an answer token
# or its end token). Each is packed, whole, into rows of block_size positions (data.pack); a batch
# is batch_size rows: one shape, almost no padding. An example keeps its own positions 0, 1, ... and
# sees only itself (model.py), as if alone. The targets are the next tokens, as in pretraining, but
# -100 where the next token is prompt or padding: the loss (and gradient) comes from the answers.
default_dir, script = os.path.join("data", "alpaca"), "prepare_alpaca.py"
data_dir = data_dir or default_dir
meta = data.prepare_on_demand(data_dir, default_dir, script, runtime)
examples = {split: data.read_examples(data_dir, meta, split, block_size, verbose=runtime.master)
            for split in ("train", "val")}
packed = {split: data.pack(examples[split], block_size, seed) for split in ("train", "val")}
n_rows = {split: len(packed[split]["starts"]) - 1 for split in ("train", "val")}
rows_per_step = batch_size * gradient_accumulation_steps * runtime.world_size
steps_per_epoch = n_rows["train"] // rows_per_step
if steps_per_epoch == 0:
    raise UserError(f"train packs into {n_rows['train']} rows of {block_size} tokens; a step needs "
                    f"{rows_per_step} (batch_size x gradient_accumulation_steps x processes)")
if runtime.master:
    print(f"data: {data_dir}, {len(examples['train']['usable']):,} train examples in "
          f"{n_rows['train']:,} rows ({packed['train']['fill']:.1%} filled); {steps_per_epoch} "
          f"steps per epoch: max_iters {max_iters} is {max_iters / steps_per_epoch:.1f} epochs")


def get_batch(split, i=None):
    """i=None: the next micro-batch of training. i=k: batch k of a fixed evaluation set."""
    if i is None:  # each epoch its own order of the rows, a function of (seed, epoch)
        epoch, n = divmod(batches_drawn[split], steps_per_epoch * gradient_accumulation_steps)
        order = np.random.default_rng((seed, epoch)).permutation(n_rows[split])
        start = (n * runtime.world_size + runtime.rank) * batch_size  # this process's slice
        batch = order[start : start + batch_size]
        batches_drawn[split] += 1
    else:  # rows spread over the split: pack put the longest examples first, neighbours are alike
        stride = max(1, n_rows[split] // (eval_iters * batch_size))
        batch = ((i * batch_size + np.arange(batch_size)) * stride) % n_rows[split]
    x, y, positions = data.packed_batch(examples[split], packed[split], batch, block_size,
                                        meta["end_token"])  # pad: never a target, never attended to
    return to_device(x), to_device(y), to_device(positions)


batches_drawn = {"train": 0, "val": 0}  # micro-batches drawn: with the seed, the loader's position
if meta["vocab_size"] > model.config.vocab_size:
    raise UserError(f"the data uses {meta['vocab_size']} token ids; the model has "
                    f"{model.config.vocab_size}")
# END OF DATA LOADER
# --------------------------------------------------------------------------------------------------

# The optimizer, and everything a resumed run needs back.
iter_num, best_val_loss, tokens_before = 0, float("inf"), 0  # tokens_before: before a resume
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2),
                                      runtime.device_type)
scaler = torch.amp.GradScaler(runtime.device_type, enabled=(runtime.dtype == "float16"))
if init_from == "resume":
    checkpoint.check_resume_data(resumed, data_dir)
    optimizer.load_state_dict(resumed["optimizer"])
    scaler.load_state_dict(resumed["scaler"])
    iter_num, best_val_loss = resumed["iter_num"], resumed["best_val_loss"]
    tokens_before = resumed.get("tokens", 0)
    batches_drawn.update(resumed["batches_drawn"])
    checkpoint.restore_rng_state(resumed["rng_state"], runtime)
    evaluates_again = iter_num % eval_interval == 0 or iter_num >= max_iters  # loop's, or last
    if runtime.master:
        print(f"resuming from step {iter_num}")
        checkpoint.truncate_metrics(out_dir, iter_num, evaluates_again)
if runtime.master:
    os.makedirs(out_dir, exist_ok=True)  # for metrics.jsonl (checkpoints make their own folder too)
    checkpoint.remove_stale_temp_files(out_dir)
resumed = None  # free the memory
raw_model = model
if compile:  # every batch has one shape: one graph for training, and one for evaluation
    if runtime.master:
        print("compiling the model (takes a minute)...")
    model = torch.compile(model)
if runtime.ddp:
    model = DDP(model, device_ids=[runtime.local_rank] if runtime.device_type == "cuda" else None)


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
            X, Y, P = get_batch(split, k)
            with autocast:
                _, loss = model(X, Y, P)
            n = int((Y != -100).sum())
            loss_sum, n_targets = loss_sum + loss.item() * n, n_targets + n
        out[split] = loss_sum / max(n_targets, 1)
        if runtime.ddp:  # every process must take the same "is this the best?" decision, to the bit
            loss_tensor = torch.tensor(out[split], device=runtime.device)
            dist.broadcast(loss_tensor, src=0)
            out[split] = loss_tensor.item()
    model.train()
    return out


def save_checkpoint(path, with_optimizer=True):
    """Everything a resumed run needs (checkpoint.py lists it), written atomically. Call on every
    process."""
    rng_states = checkpoint.rng_states(runtime) if with_optimizer else None  # a DDP collective
    if not runtime.master:
        return
    state = {"model": raw_model.state_dict(), "model_args": asdict(raw_model.config),
             "config": config, "meta": meta, "script": os.path.basename(__file__),
             "data_dir": data_dir, "iter_num": iter_num, "best_val_loss": best_val_loss}
    if with_optimizer:
        state.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                     rng_state=rng_states, batches_drawn=batches_drawn,
                     tokens=tokens_before + tokens_seen)
    try:
        checkpoint.save_atomic(state, path)
    except OSError as e:
        if pbar is not None:
            pbar.close()  # the message on a line of its own, not glued to the progress bar
        raise UserError(f"could not write {path} ({e.strerror}); the previous checkpoint is "
                        f"intact") from None


def evaluate_and_save():
    global best_val_loss, saved_iter
    losses = estimate_loss()  # the same fixed batches on every process: all agree on "best"
    is_best = losses["val"] < best_val_loss
    best_val_loss = min(best_val_loss, losses["val"])
    if runtime.master:
        tqdm.write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss "
                   f"{losses['val']:.4f}" + (" (best)" if is_best else ""))
        log_metrics({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"]})
    if eval_only:
        return  # measuring must never overwrite the run's checkpoint
    if (always_save_checkpoint and iter_num > 0) or iter_num == max_iters:
        save_checkpoint(os.path.join(out_dir, "ckpt.pt"))  # the latest state: what resume continues
        saved_iter = iter_num
    if is_best and iter_num > 0:
        save_checkpoint(os.path.join(out_dir, "best.pt"), with_optimizer=False)


def log_metrics(record):
    with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------------
# The training loop: the heartbeat. Next-token cross-entropy, gradient accumulation, clipping,
# AdamW.
pbar = None  # the progress bar, while the loop runs
if eval_only:
    evaluate_and_save()
    sys.exit(0)
saved_iter = iter_num if init_from == "resume" else None  # the newest ckpt.pt's step, for Ctrl-C
pbar = tqdm(total=max_iters, initial=iter_num, disable=not runtime.master, unit="step",
            dynamic_ncols=True)
t0, tokens_seen = time.time(), 0
targets_seen = torch.zeros((), dtype=torch.long, device=runtime.device)  # read only when logging
try:
    while iter_num < max_iters:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % eval_interval == 0:
            evaluate_and_save()

        # Draw the whole step first, to know how many target tokens it holds across micro-batches
        # and processes.
        batches = [get_batch("train") for _ in range(gradient_accumulation_steps)]
        n_step_targets = sum((Y != -100).sum() for _, Y, _ in batches)
        if runtime.ddp:
            dist.all_reduce(n_step_targets)
        step_loss = torch.zeros((), device=runtime.device)
        for micro_step, (X, Y, P) in enumerate(batches):
            if runtime.ddp:  # sync gradients across processes only once, after the last micro-batch
                model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
            with autocast:
                _, loss = model(X, Y, P)
            # Weight each micro-batch by its share of the step's target tokens: the step then
            # minimises the mean over all its targets, exactly as one big batch would, however the
            # targets fall into micro-batches. (DDP averages gradients over processes: *
            # world_size.)
            loss = loss * (Y != -100).sum() * runtime.world_size / n_step_targets.clamp(min=1)
            scaler.scale(loss).backward()
            step_loss += loss.detach() / runtime.world_size
            tokens_seen += X.numel() * runtime.world_size
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        targets_seen += n_step_targets  # kept on the device: no wait for the GPU at every step
        iter_num += 1

        if iter_num % log_interval == 0 or iter_num == max_iters:
            if runtime.ddp:
                dist.all_reduce(step_loss)
            elapsed = time.time() - t0
            record = {"iter": iter_num, "loss": step_loss.item(), "lr": lr, "time_s": elapsed,
                      "tokens": tokens_before + tokens_seen, "tokens_per_s": tokens_seen / elapsed,
                      "targets_per_s": targets_seen.item() / elapsed}
            if runtime.master:
                log_metrics(record)
            pbar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                             tok_s=f"{record['tokens_per_s']:.0f}",
                             sup_tok_s=f"{record['targets_per_s']:.0f}")
        pbar.update(1)
except KeyboardInterrupt:
    pbar.close()
    last = (f"the last checkpoint is step {saved_iter}; --init_from=resume continues from it"
            if saved_iter is not None else "no checkpoint was written")
    raise UserError(f"stopped at step {iter_num}; {last}") from None
pbar.close()
evaluate_and_save()
if runtime.master:
    print(f"done: {iter_num} steps, best val loss {best_val_loss:.4f}; checkpoints and "
          f"metrics.jsonl in {out_dir}/")
    if runtime.device_type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if compile:  # each graph break or recompile costs speed: say whether compiling paid
        counters = torch._dynamo.utils.counters
        print(f"torch.compile: {counters['stats']['unique_graphs']} graphs, "
              f"{sum(counters['graph_break'].values())} graph breaks")
if runtime.ddp:
    # Every process reaches this line before any tears down its connections: a process that left
    # while its peer's gloo thread still used them made the peer abort ("terminate called without an
    # active exception").
    dist.barrier()
    dist.destroy_process_group()
