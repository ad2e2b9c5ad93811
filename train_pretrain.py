"""
Pretraining: teach a GPT language itself by predicting the next token of a text.

This is the heartbeat of every GPT: next-token cross-entropy (from model.py), gradient accumulation,
clipping, AdamW, warmup + cosine. train_sft.py is this file with one section changed, the data
loader; `diff train_pretrain.py train_sft.py` shows it.

    python train_pretrain.py configs/tiny_shakespeare.py      # a small GPT from scratch, on a CPU
    python train_pretrain.py configs/tiny_shakespeare.py --max_iters=100    # override any setting
    torchrun --standalone --nproc_per_node=8 train_pretrain.py ...          # several GPUs (DDP)
"""

import math
import os
import sys
import time
from dataclasses import replace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import checkpoint
import common
import data
import errors
import lora
import metrics
from configurator import load_config
from errors import UserError
from model import PADDED_VOCAB_SIZE, GPTConfig

errors.report_user_errors()  # from here on, a UserError ends the run with one `error: ...` line

# --------------------------------------------------------------------------------------------------
# Settings: the defaults (the same in both training scripts); a run's own values live in configs/.
out_dir = "out"
init_from = "scratch"  # 'scratch', 'resume' (out_dir), 'gpt2' (-medium/-large/-xl), HF dir or ckpt
overwrite = False  # a new run into an out_dir that holds another run replaces it (else: refused)
data_dir = ""  # '' = the loader's own default: data/shakespeare (pretraining), data/alpaca (SFT)
eval_interval = 250  # evaluate every this many steps (best.pt: the model at the best val loss)
eval_iters = 20  # batches per evaluation
log_interval = 10  # steps between metrics.jsonl lines
checkpoint_interval = 0  # ckpt.pt (resumable) every this many steps, 0 = at every evaluation; and
# always at the end, and when a run is stopped (Ctrl-C, SIGTERM)
eval_only = False
seed = 1337
# the model, when init_from='scratch'
n_layer = 12
n_head = 12
n_embd = 768
block_size = 0  # the context window, every row's length: 0 = a loaded model's own (scratch: 1024)
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
threads = 0  # CPU threads: 0 = the cores idle at the start (1 on a machine busy with other work)
compile = False  # torch.compile the model
attention = "auto"  # packed rows: 'sdpa' (any device), 'flex'; auto = flex when compiling on CUDA
loss_path = "auto"  # 'chunked' (logits at targets only), 'fused'; auto = fused when compiling
gradient_checkpointing = False  # recompute activations in the backward pass: less memory
# logging, beside metrics.jsonl (docs/GUIDE.md)
wandb_log = False  # Weights & Biases (pip install wandb)
wandb_project = "nanosft"
wandb_run_name = ""  # '' = out_dir's name
tensorboard_log = False  # TensorBoard event files in out_dir/tensorboard (pip install tensorboard)
defaults = {k: v for k, v in globals().items() if not k.startswith("_") and not k.isupper()
            and isinstance(v, (int, float, bool, str))}  # the settings above (no CONSTANTS)
config = load_config(defaults, sys.argv[1:])
globals().update(config)

# --------------------------------------------------------------------------------------------------
# The runtime: one process per GPU under torchrun (DDP), else a single process. See common.py.
runtime = common.setup_runtime(device, dtype, seed, threads)
autocast = runtime.autocast()  # bf16/fp16 autocast, or nothing for fp32
if runtime.master:
    print(f"runtime: {runtime.describe()}")

# --------------------------------------------------------------------------------------------------
# The model: from scratch, from GPT-2 (or any HF GPT-2 checkpoint), or from a checkpoint of ours.
# The shape below is used from scratch. A loaded model keeps its own (a resumed one comes back as
# saved); a checkpoint of ours takes this run's dropout, GPT-2 its dropout and vocab_size.
model_config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
                         block_size=block_size or 1024, dropout=dropout, bias=bias)
if lora_rank != 0:
    lora.check_settings(lora_rank, lora_alpha, lora_targets, lora_dropout)  # before gigabytes load
if init_from != "resume" and not eval_only:
    checkpoint.check_out_dir(out_dir, overwrite)  # a new run never silently replaces another
model, resumed, source = checkpoint.init_model(init_from, out_dir, model_config, runtime)
if init_from == "resume":  # resumed: its checkpoint. It must go on as it was, before anything loads
    checkpoint.check_resume(resumed, config, runtime.world_size, os.path.basename(__file__))
block_size = config["block_size"] = checkpoint.context_window(block_size, model, source)
# How to compute (model.GPTConfig's last fields): this run's choice, for the model as it loaded (its
# dropout), never what a checkpoint was trained with
attention, loss_path = common.pick_kernels(attention, loss_path, runtime.device_type, compile,
                                           model.config.dropout, eval_only)
model.config = replace(model.config, attention=attention, loss_path=loss_path,
                       gradient_checkpointing=gradient_checkpointing)
if lora_rank != 0 and init_from != "resume":  # a resumed LoRA run's checkpoint brings its adapters
    lora.apply_lora(model, lora_rank, lora_alpha, lora_targets, lora_dropout)
model.to(runtime.device)
if runtime.master:
    print(f"model: {source}; {model.num_params() / 1e6:.2f}M parameters, block_size {block_size}; "
          f"loss {loss_path}" + (", gradient checkpointing" if gradient_checkpointing else "")
          + f"; {lora.trainable_summary(model)}")


def to_device(array):
    tensor = torch.from_numpy(array)
    if runtime.device_type == "cuda":  # from page-locked memory, the copy overlaps with compute
        return tensor.pin_memory().to(runtime.device, non_blocking=True)  # (torch reuses buffers)
    return tensor.to(runtime.device)


# --------------------------------------------------------------------------------------------------
# DATA LOADER: pretraining (the only section that differs from train_sft.py)
# The data is one long stream of token ids from prepare_text.py. A batch is batch_size random
# windows of block_size tokens, and the target of every token is simply the next one: every position
# is learned from. A window is one stretch of text, at positions 0 .. block_size-1.
default_dir, script = os.path.join("data", "shakespeare"), "prepare_text.py"
data_dir = data_dir or default_dir
if init_from == "resume":  # the data it trained on, before anything is read
    checkpoint.check_resume_data(resumed, data_dir)
meta = data.prepare_on_demand(data_dir, default_dir, script, runtime)
tokens = {split: data.read_tokens(data_dir, meta, split) for split in ("train", "val")}
for split in ("train", "val"):
    if len(tokens[split]) <= block_size:
        raise UserError(f"{split}.bin has {len(tokens[split])} tokens; one window needs "
                        f"block_size + 1 = {block_size + 1}")
step_tokens = batch_size * block_size * gradient_accumulation_steps * runtime.world_size
if runtime.master:
    epochs = max_iters * step_tokens / len(tokens["train"])
    print(f"data: {data_dir}, {len(tokens['train']):,} train tokens in windows (causal attention); "
          f"{step_tokens:,} tokens per step: max_iters {max_iters} is {epochs:.1f} epochs")


def get_batch(split, i=None):
    """i=None: the next micro-batch of training. i=k: batch k of a fixed evaluation set."""
    n_starts = len(tokens[split]) - block_size  # a window and its next-token targets must fit
    if i is None:  # random windows, from a seed that depends only on (seed, process, batch number)
        starts = data.random_starts(n_starts, batch_size, seed, batches_drawn[split], runtime)
        batches_drawn[split] += 1
    else:  # windows spread evenly over the split
        starts = data.spread(n_starts, i, batch_size, eval_iters)
    x, y = data.windows(tokens[split], starts, block_size)
    return to_device(x), to_device(y), None  # positions None: each row is one window of text


batches_drawn = {"train": 0, "val": 0}  # micro-batches drawn: with the seed, the loader's position
if meta["vocab_size"] > model.config.vocab_size:
    raise UserError(f"the data uses {meta['vocab_size']} token ids; the model has "
                    f"{model.config.vocab_size}")
# END OF DATA LOADER
# --------------------------------------------------------------------------------------------------

# The optimizer, and everything a resumed run needs back.
iter_num, best_val_loss, tokens_before = 0, float("inf"), 0  # tokens_before: before a resume
base_model = init_from  # the model the run began from, kept through resumes (sample.py --compare)
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2),
                                      runtime.device_type)
scaler = torch.amp.GradScaler(runtime.device_type, enabled=(runtime.dtype == "float16"))
if init_from == "resume":
    optimizer.load_state_dict(resumed["optimizer"])
    scaler.load_state_dict(resumed["scaler"])
    iter_num, best_val_loss = resumed["iter_num"], resumed["best_val_loss"]
    tokens_before, base_model = resumed["tokens"], resumed["base_model"]
    batches_drawn.update(resumed["batches_drawn"])
    checkpoint.restore_rng_state(resumed["rng_state"], runtime)
resumed = None  # free the memory
checkpoint_every = checkpoint_interval or eval_interval
if runtime.master:
    if overwrite and init_from != "resume" and not eval_only:
        checkpoint.clear_out_dir(out_dir)  # (after the model loaded: it may have come from here)
    checkpoint.remove_stale_temp_files(out_dir)
    print("evaluating only: nothing is written" if eval_only else
          f"out_dir: {out_dir}/, ckpt.pt every {checkpoint_every} steps, at the end and on a stop"
          + (f"; resuming from step {iter_num}" if init_from == "resume" else ""))
resume_step = iter_num if init_from == "resume" else None
log = metrics.MetricsLog(out_dir, config, runtime.master, resume_step)  # metrics.jsonl and trackers
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


def save_checkpoint(name, with_optimizer=True):
    """out_dir/name: everything a resumed run needs (checkpoint.py lists it), written atomically.
    Call on every process."""
    global saved_iter
    rng_states = checkpoint.rng_states(runtime) if with_optimizer else None  # a DDP collective
    if not runtime.master:
        return
    resume = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                  rng_state=rng_states, batches_drawn=batches_drawn,
                  tokens=tokens_before + tokens_seen)
    checkpoint.save(os.path.join(out_dir, name), raw_model, config=config, meta=meta,
                    script=os.path.basename(__file__), data_dir=data_dir, iter_num=iter_num,
                    best_val_loss=best_val_loss, base_model=base_model,
                    resume=resume if with_optimizer else None)
    saved_iter = iter_num if with_optimizer else saved_iter


def evaluate():
    global best_val_loss
    started = time.time()
    losses = estimate_loss()  # the same fixed batches on every process: all agree on "best"
    is_best = losses["val"] < best_val_loss
    best_val_loss = min(best_val_loss, losses["val"])
    if runtime.master:
        tqdm.write(f"step {iter_num}: train loss {losses['train']:.4f}, val loss "
                   f"{losses['val']:.4f}" + (" (best)" if is_best else ""))
        log.write({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                   "eval_s": time.time() - started})
    if is_best and iter_num > 0 and not eval_only:  # (evaluating only writes nothing)
        save_checkpoint("best.pt", with_optimizer=False)


# --------------------------------------------------------------------------------------------------
# The training loop: the heartbeat. Next-token cross-entropy, gradient accumulation, clipping,
# AdamW.
if eval_only:
    evaluate()
    log.close()
    sys.exit(0)
saved_iter = iter_num if init_from == "resume" else None  # the newest ckpt.pt's step
stop = common.StopSignals(runtime)  # Ctrl-C or SIGTERM: finish the step, save, and stop
first_step, pbar = iter_num, tqdm(disable=True)  # the progress bar starts after the first step
t0, tokens_seen = time.time(), 0
targets_seen = torch.zeros((), dtype=torch.long, device=runtime.device)  # read only when logging
try:
    while iter_num < max_iters:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % eval_interval == 0:
            evaluate()
            pbar.unpause()  # the bar's rate and ETA count training steps only
        if iter_num % checkpoint_every == 0 and iter_num > 0:
            save_checkpoint("ckpt.pt")

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
        if iter_num == first_step + 1:  # the bar starts now: the first step's warm-up (allocations,
            # compiling) would make its first ETAs hours
            pbar = tqdm(total=max_iters, initial=iter_num, disable=not runtime.master, unit="step",
                        dynamic_ncols=True)
        else:
            pbar.update(1)

        if iter_num % log_interval == 0 or iter_num == max_iters:
            if runtime.ddp:
                dist.all_reduce(step_loss)
            elapsed = time.time() - t0
            record = {"iter": iter_num, "loss": step_loss.item(), "lr": lr, "time_s": elapsed,
                      "tokens": tokens_before + tokens_seen, "tokens_per_s": tokens_seen / elapsed,
                      "targets_per_s": targets_seen.item() / elapsed}
            log.write(record)
            pbar.set_postfix({"loss": f"{record['loss']:.4f}", "lr": f"{lr:.2e}",
                              "tok/s": f"{record['tokens_per_s']:.0f}",
                              "targets/s": f"{record['targets_per_s']:.0f}"})
        if stop.requested():
            break
    pbar.close()
    if stop.received and iter_num < max_iters:  # the step reached, saved: resume goes on from it
        save_checkpoint("ckpt.pt")
        if runtime.master:
            print(f"stopped by {stop.name} at step {iter_num}: saved {out_dir}/ckpt.pt; "
                  "--init_from=resume continues from it", file=sys.stderr)
        log.close()
        sys.exit(stop.exit_code)
except KeyboardInterrupt:  # a second Ctrl-C: stop at once (a checkpoint being written is not kept)
    pbar.close()
    last = f"step {saved_iter}" if saved_iter is not None else "none was written"
    print(f"stopped at once at step {iter_num}; the last checkpoint: {last}", file=sys.stderr)
    sys.exit(130)
finally:
    pbar.close()  # (before any error line: it gets a line of its own)
    stop.restore()
evaluate()
save_checkpoint("ckpt.pt")
log.close()
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
