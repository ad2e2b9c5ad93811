"""
Plumbing that the two trainers, sample.py and the benchmark share: where and in what precision to run, one
process or several (DDP), checkpoints, and data on demand. None of it is the lesson; the lesson is model.py
and the training loop, which stay in the scripts where they can be read.
"""

import glob
import json
import os
import shlex
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import chat_template
import lora
from model import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UserError(SystemExit):
    """A mistake in what the user asked for: one line on stderr and exit code 2, no traceback. (Tracebacks
    are for bugs.) Raised where the mistake is found; the line is printed then, the exit follows."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr, flush=True)
        super().__init__(2)
        self.message = message


# ----------------------------------------------------------------------------------------------------------
# Where and in what precision to run


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda': what autocast, the dtype choice and the optimizer want."""
    return "cuda" if device.startswith("cuda") else device


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with bf16 dot-product instructions; elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str, device_type: str) -> str:
    """'auto' = bf16 where the hardware does bf16 natively, else fp32 (CPU) or fp16 (older GPUs)."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def tune_cpu_allocator() -> None:
    """Stop glibc from returning freed buffers to the OS after every step and mapping them again the next.

    By default each large buffer of a step is its own mmap, paid for in page faults every time; keeping the
    memory makes a CPU step faster (BENCHMARKS.md). Same effect as MALLOC_MMAP_MAX_=0 and a large
    MALLOC_TRIM_THRESHOLD_; a no-op where glibc is absent.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: never serve a malloc with its own mmap
        libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD: -1 becomes SIZE_MAX (glibc takes it as size_t): never trim
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------------------
# Processes: one per GPU under torchrun (DDP), else a single one


@dataclass
class Processes:
    ddp: bool
    rank: int
    local_rank: int  # the process's number on its own machine
    world_size: int
    device: str
    device_type: str  # 'cuda', 'cpu' or 'mps': what autocast and the optimizer want
    dtype: str  # 'float32', 'bfloat16' or 'float16'

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.dtype == "float32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=DTYPES[self.dtype])

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()


def setup_processes(device: str, dtype: str, seed: int) -> Processes:
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank, world_size = 0, 0, 1
    device = pick_device(device)
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        else:  # CPU processes share the cores instead of each taking all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    torch.manual_seed(seed + rank)
    kind = device_type(device)
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if kind == "cpu":
        tune_cpu_allocator()
    return Processes(ddp, rank, local_rank, world_size, device, kind, pick_dtype(dtype, kind))


# ----------------------------------------------------------------------------------------------------------
# Models and checkpoints


def checkpoint_path(source: str) -> str | None:
    """Our checkpoint file for a .pt path or a folder holding ckpt.pt; None if source is neither."""
    path = source if source.endswith(".pt") else os.path.join(source, "ckpt.pt")
    return path if os.path.isfile(path) else None


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only, no code


def model_from_checkpoint(checkpoint: dict, merge: bool = True, **overrides) -> GPT:
    """The checkpoint's model. A LoRA run's (lora_rank > 0) is rebuilt with its adapters, then merged into a plain
    GPT unless merge=False (resuming that run)."""
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


def init_model(init_from: str, out_dir: str, config: GPTConfig, proc: Processes) -> tuple[GPT, dict | None]:
    """The model a run starts from, and on resume the checkpoint it came from (else None):
    'scratch' (a new GPT of this config), 'resume' (out_dir/ckpt.pt, exactly as saved), a checkpoint of ours,
    or a GPT-2 name / folder in HF's layout (those two take config's dropout; GPT-2's vocabulary grows to
    config's vocab_size)."""
    if init_from == "resume":
        path = checkpoint_path(out_dir)
        if path is None:
            raise UserError(f"init_from=resume, but {out_dir}/ckpt.pt does not exist: there is nothing to resume "
                            f"(check out_dir, or start with init_from=scratch or a model)")
        checkpoint = load_checkpoint(path)
        return model_from_checkpoint(checkpoint, merge=False), checkpoint
    if init_from == "scratch":
        return GPT(config), None
    path = checkpoint_path(init_from)
    if path is not None:  # our own checkpoint, fine-tuned further with this run's dropout
        # (the checkpoint itself is dropped here: its optimizer state belongs to the run that wrote it)
        return model_from_checkpoint(load_checkpoint(path), dropout=config.dropout), None
    if proc.local_rank != 0:
        proc.barrier()  # one process per machine downloads GPT-2; the others then read it from the cache
    model, error = None, None
    try:
        model = GPT.from_pretrained(init_from, vocab_size=config.vocab_size, dropout=config.dropout)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        error = e
    if proc.local_rank == 0:
        proc.barrier()  # reached on failure too, or the other processes would wait here forever
    if error is not None:
        raise UserError(f"init_from={init_from}: {error}")
    return model, None


def check_lora(rank: int, alpha: float, targets: str, dropout: float) -> None:
    """LoRA's settings, checked before a model of gigabytes loads: a bad one is one clear line."""
    try:
        lora.check_settings(rank, alpha, targets, dropout)
    except ValueError as e:
        raise UserError(str(e)) from None


def weight_counts(model: torch.nn.Module) -> dict:
    """{"trainable": weights the optimizer updates, "total": all of them} (a tied matrix counts once)."""
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def trainable_summary(model: GPT) -> str:
    """What the optimizer will update: 'training every weight', or with LoRA (GPT-2 124M, rank 8) 'LoRA:
    training 1,215,744 weights (adapters and the chat tokens' rows), 0.97% of all weights'."""
    counts = weight_counts(model)
    if counts["trainable"] == counts["total"]:
        return "training every weight"
    what = "adapters and the chat tokens' rows" if model.config.vocab_size > lora.FIRST_NEW_TOKEN else "adapters"
    share = counts["trainable"] / counts["total"]
    return f"LoRA: training {counts['trainable']:,} weights ({what}), {share:.2%} of all weights"


def check_resume(checkpoint: dict, config: dict, world_size: int) -> None:
    """The data loader's position is a count of micro-batches: it only means the same data in the same
    geometry, so a resumed run must keep batch_size, gradient_accumulation_steps and the process count. A LoRA
    run resumes as one, with the same adapters: the optimizer's state belongs to them."""
    saved = (checkpoint["config"]["batch_size"], checkpoint["config"]["gradient_accumulation_steps"],
             len(checkpoint["rng_state"]))  # one RNG state per process
    if saved != (config["batch_size"], config["gradient_accumulation_steps"], world_size):
        raise UserError(f"resume: the run used batch_size, gradient_accumulation_steps, processes = {saved}; "
                        f"resume it with the same")
    run = checkpoint["config"]  # the settings the run was started with
    run_rank = run.get("lora_rank", 0)  # a checkpoint from before LoRA: none
    if run_rank == 0 == config["lora_rank"]:
        return  # neither run uses LoRA: its other settings do not matter
    if run_rank == 0:
        raise UserError(f"resume: the run trained every weight (lora_rank=0), not LoRA adapters; resume it without "
                        f"--lora_rank={config['lora_rank']}")
    same = (run_rank == config["lora_rank"] and run["lora_alpha"] == config["lora_alpha"]
            and run["lora_dropout"] == config["lora_dropout"]
            and lora.parse_targets(run["lora_targets"]) == lora.parse_targets(config["lora_targets"]))
    if not same:
        settings = " ".join(f"--{k}={run[k]}" for k in ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout"))
        raise UserError(f"resume: the run was trained with {settings}; resume it with the same settings")


def rng_states(proc: Processes) -> list[dict]:
    """Every process's RNG state (each has its own dropout stream). A collective under DDP: call on all."""
    state = {"cpu": torch.get_rng_state()}
    if proc.device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state().cpu()
    if not proc.ddp:
        return [state]
    states = [None] * proc.world_size
    dist.all_gather_object(states, state)
    return states


def restore_rng_state(states: list[dict], proc: Processes) -> None:
    torch.set_rng_state(states[proc.rank]["cpu"])
    if proc.device_type == "cuda" and "cuda" in states[proc.rank]:
        torch.cuda.set_rng_state(states[proc.rank]["cuda"])


def save_atomic(state: dict, path: str) -> None:
    """A crash, a kill or a full disk mid-write leaves the previous file intact, never a torn one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so even a power cut leaves the old file or the new
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


# ----------------------------------------------------------------------------------------------------------
# Data


def prepare_on_demand(data_dir: str, default_dir: str, script: str, proc: Processes) -> dict:
    """The prepared data's meta.json. The default data folder is prepared on first use, so the main command
    works on a fresh clone; any other folder must exist (a typo must not become a download)."""
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        if os.path.normpath(data_dir) != os.path.normpath(default_dir):
            raise UserError(f"data_dir={data_dir} holds no prepared data (meta.json): prepare it with "
                            f"`python {script} --out_dir {data_dir}`, or leave data_dir at its default")
        if proc.local_rank == 0:  # once per machine: nodes need not share a filesystem
            print(f"prepared data not found; running: python {script} --out_dir {data_dir}")
            here = os.path.dirname(os.path.abspath(__file__))
            subprocess.run([sys.executable, os.path.join(here, script), "--out_dir", data_dir])  # speaks for itself
        proc.barrier()  # reached on failure too, or the other processes would wait here forever
        if not os.path.exists(os.path.join(data_dir, "meta.json")):
            raise UserError(f"python {script} --out_dir {data_dir} failed (its message is above); fix that and "
                            f"run again")
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    check_template_fingerprint(meta, data_dir)
    return meta


def check_template_fingerprint(meta: dict, data_dir: str) -> None:
    """SFT data (prepare_alpaca.py's) must have been rendered the way chat_template.py renders its template
    now: sample.py and the export render prompts with today's code. Pretraining text (template 'none') passes."""
    template = meta["template"]
    if template not in chat_template.TEMPLATES:
        return
    found, current = meta.get("template_fingerprint"), chat_template.fingerprint(template)
    if found == current:
        return
    # The command that prepares data_dir again, from what its meta.json recorded
    command = ["python", "prepare_alpaca.py", "--out_dir", data_dir, "--template", template]
    if meta.get("source"):
        command += ["--url" if "://" in meta["source"] else "--input", meta["source"]]
    if meta.get("system_prompt"):
        command += ["--system_prompt", meta["system_prompt"]]
    if meta.get("train_on_prompt"):
        command.append("--train_on_prompt")
    for key, flag in (("n_val", "--val_size"), ("max_len", "--max_len"), ("seed", "--seed")):
        if key in meta:
            command += [flag, str(meta[key])]
    why = (f"records no template fingerprint (it was prepared before nanoSFT recorded one), so whether "
           f"chat_template.py still renders {template} the same cannot be told" if found is None else
           f"was prepared by another version of chat_template.py (its {template} fingerprint is {found}, "
           f"now {current})")
    raise UserError(f"data_dir={data_dir} {why}: prepare it again: `{shlex.join(command)}`")


def length_grouped_order(lengths: np.ndarray, usable: np.ndarray, step_size: int, group_size: int,
                         rng: np.random.Generator) -> np.ndarray:
    """One epoch of example indices, cut into steps of step_size: shuffled, then sorted by length within
    groups of group_size (so a batch holds examples of similar length and little padding), then the steps
    shuffled (so the loss curve does not trace the lengths)."""
    order = rng.permutation(usable)[: len(usable) // step_size * step_size]
    for start in range(0, len(order), group_size):
        group = order[start : start + group_size]
        order[start : start + group_size] = group[np.argsort(lengths[group], kind="stable")]
    steps = order.reshape(-1, step_size)
    return steps[rng.permutation(len(steps))].reshape(-1)


def read_examples(data_dir: str, split: str, block_size: int, verbose: bool = True) -> dict:
    """One split of prepare_alpaca.py's output: token ids, loss mask, offsets, lengths, and which examples
    fit the context window (the others are left out, never truncated: that would cut off the end token; said
    if verbose)."""
    path = os.path.join(data_dir, f"{split}_ids.bin")
    if os.path.getsize(path) == 0:
        raise UserError(f"{data_dir}: the {split} split is empty (prepare it with --val_size above 0)")
    offsets = np.fromfile(os.path.join(data_dir, f"{split}_offsets.bin"), dtype=np.int64)
    lengths = np.diff(offsets)
    usable = np.flatnonzero(lengths - 1 <= block_size)
    if verbose and len(usable) < len(lengths):
        print(f"{split}: leaving out {len(lengths) - len(usable)} examples longer than block_size {block_size}")
    return {"ids": np.memmap(path, dtype=np.uint16, mode="r"),
            "mask": np.memmap(os.path.join(data_dir, f"{split}_mask.bin"), dtype=np.uint8, mode="r"),
            "offsets": offsets, "lengths": lengths, "usable": usable}


def data_loader_section(script: str, **names) -> dict:
    """Run the DATA LOADER section of a training script on its own and return its namespace (get_batch and
    all). The tests and the benchmark check exactly the lines the trainer runs, not a copy of them; `names`
    stands in for what those lines use from the rest of the script (settings, proc, model, to_device)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    with open(path) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# DATA LOADER:"))
    end = lines.index("# END OF DATA LOADER")
    one_process = Processes(ddp=False, rank=0, local_rank=0, world_size=1, device="cpu", device_type="cpu",
                            dtype="float32")
    namespace = {"os": os, "np": np, "torch": torch, "common": sys.modules[__name__], "UserError": UserError,
                 "proc": one_process, "to_device": torch.from_numpy, **names}
    source = "\n" * start + "\n".join(lines[start:end])  # blank lines first: tracebacks show the real line numbers
    exec(compile(source, path, "exec"), namespace)
    return namespace
