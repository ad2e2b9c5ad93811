"""
Checkpoints: the model a run starts from, what a checkpoint holds, and everything a resumed run needs back.

A checkpoint (ckpt.pt, written by the trainers) is a dict: "model" (the state dict), "model_args" (GPTConfig's
fields), "config" (the run's settings), "meta" (the prepared data's meta.json: template, system prompt),
"script" and "data_dir" (which trainer wrote it, on what data), "iter_num", "best_val_loss", and for resuming
"optimizer", "scaler", "batches_drawn", "rng_state", "tokens". best.pt holds the same without the resume part.

`load_model` is the one way to open a model for use (sample.py, export_hf.py, the experiments): our checkpoint
or GPT-2's published weights. The trainers start from `init_model`.
"""

import glob
import json
import os

import torch
import torch.distributed as dist

import lora
from common import Runtime
from errors import UserError
from model import GPT, PADDED_VOCAB_SIZE, GPTConfig

# ----------------------------------------------------------------------------------------------------------
# Reading checkpoints and opening models


def checkpoint_path(source: str) -> str | None:
    """Our checkpoint file for a .pt path or a folder holding ckpt.pt; None if source is neither."""
    path = source if source.endswith(".pt") else os.path.join(source, "ckpt.pt")
    return path if os.path.isfile(path) else None


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only, no code


def model_from_checkpoint(checkpoint: dict, merge: bool = True, **overrides) -> GPT:
    """The checkpoint's model. A LoRA run's (lora_rank > 0) is rebuilt with its adapters, then merged into a
    plain GPT unless merge=False (resuming that run)."""
    model = GPT(GPTConfig(**(checkpoint["model_args"] | overrides)))
    settings = checkpoint.get("config", {})
    is_lora = settings.get("lora_rank", 0) > 0
    if is_lora:
        lora.apply_lora(model, settings["lora_rank"], settings["lora_alpha"], settings["lora_targets"],
                        settings["lora_dropout"])
    model.load_state_dict(checkpoint["model"])
    if is_lora and merge:
        lora.merge_lora(model)
    return model


def load_pretrained(name_or_dir: str, **kwargs) -> GPT:
    """GPT.from_pretrained, with a name that is not a model (or a hub that cannot be reached) as a UserError."""
    try:
        return GPT.from_pretrained(name_or_dir, **kwargs)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise UserError(str(e)) from None


def load_model(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[GPT, dict]:
    """A model to use, not to train: (model in eval mode on device in dtype, meta).

    source is our checkpoint (a .pt file, or a folder holding ckpt.pt), whose meta says the chat template and
    system prompt it was trained with and what it was fine-tuned from (init_from); or a GPT-2 name / folder in
    Hugging Face's layout, whose meta has template 'none'. GPT-2's vocabulary is grown to ours, so the chat
    tokens exist (as untrained, average rows) and the base model can be prompted with the fine-tuned one's text.
    """
    path = checkpoint_path(source)
    if path is not None:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint)
        meta = dict(checkpoint["meta"], init_from=checkpoint["config"]["init_from"])
    else:
        model = load_pretrained(source, vocab_size=PADDED_VOCAB_SIZE)
        meta = {"template": "none", "system_prompt": None}
    # Using a model reads every weight once per token: bf16 weights halve the bytes read, and that is the speed.
    return model.eval().to(device=device, dtype=dtype), meta


def init_model(init_from: str, out_dir: str, config: GPTConfig, runtime: Runtime) -> tuple[GPT, dict | None]:
    """The model a run starts from, and on resume the checkpoint it came from (else None):
    'scratch' (a new GPT of this config), 'resume' (out_dir/ckpt.pt, exactly as saved), a checkpoint of ours,
    or a GPT-2 name / folder in HF's layout (those two take config's dropout; GPT-2's vocabulary grows to
    config's vocab_size)."""
    if init_from == "resume":
        path = checkpoint_path(out_dir)
        if path is None:
            raise UserError(f"init_from=resume, but {out_dir}/ckpt.pt does not exist: there is nothing to "
                            f"resume (check out_dir, or start with init_from=scratch or a model)")
        checkpoint = load_checkpoint(path)
        return model_from_checkpoint(checkpoint, merge=False), checkpoint
    if init_from == "scratch":
        return GPT(config), None
    path = checkpoint_path(init_from)
    if path is not None:  # our own checkpoint, fine-tuned further with this run's dropout
        # (the checkpoint itself is dropped here: its optimizer state belongs to the run that wrote it)
        return model_from_checkpoint(load_checkpoint(path), dropout=config.dropout), None
    if runtime.local_rank != 0:
        runtime.barrier()  # one process per machine downloads GPT-2; the others then read it from the cache
    model, error = None, None
    try:
        model = load_pretrained(init_from, vocab_size=config.vocab_size, dropout=config.dropout)
    except UserError as e:
        error = e
    if runtime.local_rank == 0:
        runtime.barrier()  # reached on failure too, or the other processes would wait here forever
    if error is not None:
        raise UserError(f"init_from={init_from}: {error}")
    return model, None


# ----------------------------------------------------------------------------------------------------------
# Resuming


def check_resume(checkpoint: dict, config: dict, world_size: int, script: str) -> None:
    """A resumed run must be the same run: the same trainer and context window, and the same geometry, since
    the data loader's position is a count of micro-batches that only means the same data in the same batches
    (batch_size, gradient_accumulation_steps, processes). A LoRA run resumes as one, with the same adapters:
    the optimizer's state belongs to them. (The data folder is checked by check_resume_data.)"""
    run = checkpoint["config"]  # the settings the run was started with
    where = f"resume: {config['out_dir']}/ckpt.pt"
    if checkpoint.get("script", script) != script:
        raise UserError(f"{where} was written by {checkpoint['script']}, not {script}: continue it with "
                        f"`python {checkpoint['script']} ... --init_from=resume`, or start a new run from it "
                        f"with --init_from={config['out_dir']} and another --out_dir")
    if run["block_size"] != config["block_size"]:
        raise UserError(f"{where} was trained with block_size={run['block_size']}, not "
                        f"{config['block_size']}; resume it with the same")
    saved = (run["batch_size"], run["gradient_accumulation_steps"], len(checkpoint["rng_state"]))
    if saved != (config["batch_size"], config["gradient_accumulation_steps"], world_size):
        raise UserError(f"resume: the run used batch_size, gradient_accumulation_steps, processes = {saved}; "
                        f"resume it with the same")
    run_rank = run.get("lora_rank", 0)  # a checkpoint from before LoRA: none
    if run_rank == 0 == config["lora_rank"]:
        return  # neither run uses LoRA: its other settings do not matter
    if run_rank == 0:
        raise UserError(f"resume: the run trained every weight (lora_rank=0), not LoRA adapters; resume it "
                        f"without --lora_rank={config['lora_rank']}")
    same = (run_rank == config["lora_rank"] and run["lora_alpha"] == config["lora_alpha"]
            and run["lora_dropout"] == config["lora_dropout"]
            and lora.parse_targets(run["lora_targets"]) == lora.parse_targets(config["lora_targets"]))
    if not same:
        settings = " ".join(f"--{k}={run[k]}" for k in ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout"))
        raise UserError(f"resume: the run was trained with {settings}; resume it with the same settings")


def check_resume_data(checkpoint: dict, data_dir: str) -> None:
    """A resumed run continues on the data it trained on (its loader position, its best val loss)."""
    trained_on = checkpoint.get("data_dir")
    if trained_on is not None and os.path.normpath(trained_on) != os.path.normpath(data_dir):
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
    if runtime.device_type == "cuda" and "cuda" in states[runtime.rank]:
        torch.cuda.set_rng_state(states[runtime.rank]["cuda"])


# ----------------------------------------------------------------------------------------------------------
# Writing: checkpoints atomically, metrics.jsonl true to the steps that were run


def save_atomic(state: dict, path: str) -> None:
    """A crash, a kill or a full disk mid-write leaves the previous file intact, never a torn one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: even a power cut leaves the old file or the new
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temp_files(out_dir: str) -> None:
    """A run killed while saving leaves its *.tmp behind (the real checkpoint is intact): clear it away."""
    for path in glob.glob(os.path.join(out_dir, "*.tmp")):
        os.remove(path)


def truncate_metrics(out_dir: str, iter_num: int, evaluates_again: bool) -> None:
    """On resume from step iter_num, forget what was logged after it (those steps run again, and a curve must
    not hold them twice), and the evaluation at iter_num itself when the resumed run repeats it."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the interruption
            repeated = record["iter"] == iter_num and "val_loss" in record and evaluates_again
            if record["iter"] <= iter_num and not repeated:
                kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
