"""
Checkpoints: the one owner of their format. What a checkpoint holds, writing it atomically, reading it, the
model a run starts from, and everything a resumed run needs back.

A checkpoint (ckpt.pt, and best.pt without the resume part) is a dict, built by `build` only:

    model          the state dict                      model_args     GPTConfig's fields, run choices left out
    config         the run's settings                  meta           the prepared data's meta.json
    script         the trainer that wrote it           data_dir       the data it trained on
    iter_num       the steps done                      best_val_loss  the best evaluation so far
    base_model     what the run began from (its init_from), kept through every resume (sample.py --compare)
    resume part:   optimizer, scaler, rng_state (every process's), batches_drawn (the loader's position),
                   tokens (seen so far)

`load_model` is the one way to open a model for use (sample.py, export_hf.py, the experiments): our checkpoint
or GPT-2's published weights. The trainers start from `init_model`.
"""

import os
import shutil
from dataclasses import asdict

import torch
import torch.distributed as dist

import hf_checkpoint
import lora
import metrics
from common import Runtime
from errors import UserError
from model import GPT, PADDED_VOCAB_SIZE, RUN_CHOICES, GPTConfig

RUN_FIELDS = ("config", "meta", "script", "data_dir", "iter_num", "best_val_loss", "base_model")
RESUME_FIELDS = ("optimizer", "scaler", "rng_state", "batches_drawn", "tokens")
RUN_FILES = ("ckpt.pt", "best.pt", *metrics.FILES)  # what a run writes in its out_dir

# ----------------------------------------------------------------------------------------------------------
# Writing


def build(model: GPT, *, config: dict, meta: dict, script: str, data_dir: str, iter_num: int,
          best_val_loss: float, base_model: str, resume: dict | None = None) -> dict:
    """The checkpoint of model: RUN_FIELDS, and with resume (a dict of RESUME_FIELDS) all a resumed run needs.
    How the run computed (attention, loss path, gradient checkpointing) is left out: the next run chooses."""
    if resume is not None and sorted(resume) != sorted(RESUME_FIELDS):
        raise ValueError(f"resume holds {sorted(resume)}, not {sorted(RESUME_FIELDS)}")
    model_args = {k: v for k, v in asdict(model.config).items() if k not in RUN_CHOICES}
    return {"model": model.state_dict(), "model_args": model_args, "config": config, "meta": meta,
            "script": script, "data_dir": data_dir, "iter_num": iter_num, "best_val_loss": best_val_loss,
            "base_model": base_model, **(resume or {})}


def save(path: str, model: GPT, **fields) -> None:
    """build(model, **fields), written to path atomically: a crash, a kill or a full disk mid-write leaves the
    previous file intact, never a torn one."""
    state = build(model, **fields)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: even a power cut leaves the old file or the new
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror}); the previous checkpoint is intact") from None
    except RuntimeError as e:  # a Ctrl-C inside torch.save comes out of its zip writer as this
        if isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if os.path.exists(tmp):  # only when something above failed (or a second Ctrl-C came)
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------------------
# Reading checkpoints and opening models


def checkpoint_path(source: str) -> str | None:
    """Our checkpoint file for a .pt path or a folder holding ckpt.pt; None if source is neither."""
    path = source if source.endswith(".pt") else os.path.join(source, "ckpt.pt")
    return path if os.path.isfile(path) else None


def load_checkpoint(path: str, for_resume: bool = False) -> dict:
    """A checkpoint's dict (tensors and plain data only: no code runs). One written by an older nanoSFT, without
    a field this one reads, is one line saying what to do, never a KeyError."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    needed = ("model", "model_args", *RUN_FIELDS, *(RESUME_FIELDS if for_resume else ()))
    missing = [k for k in needed if k not in checkpoint]
    if missing:
        folder = os.path.dirname(path) or "."
        todo = (f"resume is refused; start a new run from it with --init_from={folder} and another --out_dir"
                if for_resume else "train it again with this version")
        raise UserError(f"{path} was written by an older nanoSFT (it has no {', '.join(missing)}): {todo}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict, merge: bool = True, **overrides) -> GPT:
    """The checkpoint's model. A LoRA run's (lora_rank > 0) is rebuilt with its adapters, then merged into a
    plain GPT unless merge=False (resuming that run). overrides: GPTConfig fields (a new run's dropout)."""
    model = GPT(GPTConfig(**(checkpoint["model_args"] | overrides)))
    settings = checkpoint["config"]
    if settings["lora_rank"] > 0:
        lora.apply_lora(model, settings["lora_rank"], settings["lora_alpha"], settings["lora_targets"],
                        settings["lora_dropout"])
    model.load_state_dict(checkpoint["model"])
    if settings["lora_rank"] > 0 and merge:
        lora.merge_lora(model)
    return model


def load_model(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, dict]:
    """A model to use, not to train: (model in eval mode on device in dtype, meta).

    source is our checkpoint (a .pt file, or a folder holding ckpt.pt), whose meta says the chat template and
    system prompt it was trained with and base_model what its run began from; or a GPT-2 name / folder in
    Hugging Face's layout, whose meta has template 'none'. GPT-2's vocabulary is grown to ours, so the chat
    tokens exist (as untrained, average rows) and the base model can be prompted with the fine-tuned one's text.
    """
    path = checkpoint_path(source)
    if path is not None:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint)
        meta = dict(checkpoint["meta"], base_model=checkpoint["base_model"])
    else:
        model = GPT.from_pretrained(source, vocab_size=PADDED_VOCAB_SIZE)
        meta = {"template": "none", "system_prompt": None, "base_model": None}
    # Using a model reads every weight once per token: bf16 weights halve the bytes read, and that is the speed.
    return model.eval().to(device=device, dtype=dtype), meta


def init_model(init_from: str, out_dir: str, config: GPTConfig, runtime: Runtime) -> tuple[GPT, dict | None, str]:
    """The model a run starts from, its checkpoint when resuming (else None), and where it came from, in words:
    'scratch' (a new GPT of this config), 'resume' (out_dir/ckpt.pt, exactly as saved), a checkpoint of ours,
    or a GPT-2 name / folder in HF's layout (those two take config's dropout; GPT-2's vocabulary grows to
    config's vocab_size)."""
    if init_from == "resume":
        path = checkpoint_path(out_dir)
        if path is None:
            raise UserError(f"init_from=resume, but {out_dir}/ckpt.pt does not exist: there is nothing to "
                            f"resume (check out_dir, or start with init_from=scratch or a model)")
        checkpoint = load_checkpoint(path, for_resume=True)
        source = f"{path}, step {checkpoint['iter_num']} (began from {checkpoint['base_model']})"
        return model_from_checkpoint(checkpoint, merge=False), checkpoint, source
    if init_from == "scratch":
        return GPT(config), None, "scratch (random weights)"
    path = checkpoint_path(init_from)
    if path is not None:  # our own checkpoint, fine-tuned further with this run's dropout
        # (the checkpoint itself is dropped here: its optimizer state belongs to the run that wrote it)
        model = model_from_checkpoint(load_checkpoint(path), dropout=config.dropout)
        return model, None, f"{path} (a checkpoint of ours)"
    if runtime.local_rank != 0:
        runtime.barrier()  # one process per machine downloads GPT-2; the others then read it from the cache
    model, error = None, None
    try:
        folder = hf_checkpoint.find(init_from)
        model = GPT.from_pretrained(folder, vocab_size=config.vocab_size, dropout=config.dropout)
    except UserError as e:
        error = e
    if runtime.local_rank == 0:
        runtime.barrier()  # reached on failure too, or the other processes would wait here forever
    if error is not None:
        raise UserError(f"init_from={init_from}: {error}")
    return model, None, init_from if folder == init_from else f"{init_from} ({folder})"


def context_window(block_size: int, model: GPT, source: str) -> int:
    """block_size has one meaning: the model's context window, the length of every row a batch holds. From
    scratch the setting made it (0: 1024); a loaded model brings its own, and another setting is refused, not
    ignored. The checkpoint records this value and a resumed run keeps it."""
    if block_size and block_size != model.config.block_size:
        raise UserError(f"block_size={block_size}, but the model from {source} has a context window of "
                        f"{model.config.block_size}: a loaded model keeps its own (leave block_size at 0)")
    return model.config.block_size


# ----------------------------------------------------------------------------------------------------------
# A run's out_dir


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """A new run never silently replaces another: an out_dir holding a checkpoint is refused, unless asked."""
    found = [f for f in ("ckpt.pt", "best.pt") if os.path.exists(os.path.join(out_dir, f))]
    if found and not overwrite:
        raise UserError(f"out_dir={out_dir} holds another run ({', '.join(found)}): continue it with "
                        f"--init_from=resume, replace it with --overwrite=True, or choose another --out_dir")


def clear_out_dir(out_dir: str) -> None:
    """--overwrite: the old run's files go, so that nothing of it (a best.pt, a curve) outlives the new one."""
    for name in RUN_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def remove_stale_temp_files(out_dir: str) -> None:
    """A run killed while saving leaves its ckpt.pt.tmp behind (the real checkpoint is intact): clear it away
    (only a run's own: out_dir may be a folder of other things, '.' even)."""
    for name in RUN_FILES:
        if os.path.isfile(os.path.join(out_dir, name + ".tmp")):
            os.remove(os.path.join(out_dir, name + ".tmp"))


# ----------------------------------------------------------------------------------------------------------
# Resuming


def check_resume(checkpoint: dict, config: dict, world_size: int, script: str) -> None:
    """A resumed run must be the same run: the same trainer, and the same geometry, since the data loader's
    position is a count of micro-batches that only means the same data in the same batches (batch_size,
    gradient_accumulation_steps, processes). A LoRA run resumes as one, with the same adapters: the optimizer's
    state belongs to them. (The context window: context_window; the data folder: check_resume_data.)"""
    run = checkpoint["config"]  # the settings the run was started with
    where = f"resume: {config['out_dir']}/ckpt.pt"
    if checkpoint["script"] != script:
        raise UserError(f"{where} was written by {checkpoint['script']}, not {script}: continue it with "
                        f"`python {checkpoint['script']} ... --init_from=resume`, or start a new run from it "
                        f"with --init_from={config['out_dir']} and another --out_dir")
    if checkpoint["iter_num"] >= config["max_iters"] and not config["eval_only"]:
        raise UserError(f"{where} has reached step {checkpoint['iter_num']} and max_iters={config['max_iters']}: "
                        f"nothing is left to train; raise --max_iters to train on (--eval_only=True evaluates it)")
    saved = (run["batch_size"], run["gradient_accumulation_steps"], len(checkpoint["rng_state"]))
    if saved != (config["batch_size"], config["gradient_accumulation_steps"], world_size):
        raise UserError(f"resume: the run used batch_size, gradient_accumulation_steps, processes = {saved}; "
                        f"resume it with the same")
    if run["lora_rank"] == 0 == config["lora_rank"]:
        return  # neither run uses LoRA: its other settings do not matter
    if run["lora_rank"] == 0:
        raise UserError(f"resume: the run trained every weight (lora_rank=0), not LoRA adapters; resume it "
                        f"without --lora_rank={config['lora_rank']}")
    same = (run["lora_rank"] == config["lora_rank"] and run["lora_alpha"] == config["lora_alpha"]
            and run["lora_dropout"] == config["lora_dropout"]
            and lora.parse_targets(run["lora_targets"]) == lora.parse_targets(config["lora_targets"]))
    if not same:
        settings = " ".join(f"--{k}={run[k]}" for k in ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout"))
        raise UserError(f"resume: the run was trained with {settings}; resume it with the same settings")


def check_resume_data(checkpoint: dict, data_dir: str) -> None:
    """A resumed run continues on the data it trained on (its loader position, its best val loss)."""
    trained_on = checkpoint["data_dir"]
    if os.path.normpath(trained_on) != os.path.normpath(data_dir):
        raise UserError(f"resume: the run trained on data_dir={trained_on}, not {data_dir}; resume it with "
                        f"--data_dir={trained_on}, or start a new run from its checkpoint (--init_from=<its "
                        f"out_dir>) with another out_dir")


def rng_states(runtime: Runtime) -> list[dict]:
    """Every process's RNG state (each has its own dropout stream). A collective under DDP: call on all."""
    state = {"cpu": torch.get_rng_state()}
    if runtime.device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state().cpu()
    if not runtime.ddp:
        return [state]
    states = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng_state(states: list[dict], runtime: Runtime) -> None:
    torch.set_rng_state(states[runtime.rank]["cpu"])
    if runtime.device_type == "cuda" and "cuda" in states[runtime.rank]:  # (none if it ran on a CPU)
        torch.cuda.set_rng_state(states[runtime.rank]["cuda"])
