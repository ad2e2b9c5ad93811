"""
The runtime the scripts share: where and in what precision to run, and one process or several (DDP). It
imports nothing else of this project. Checkpoints live in checkpoint.py, the data formats in data.py, and
the one way a script stops on a user's mistake in errors.py.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def pick_dtype(dtype: str, kind: str) -> str:
    """'auto' = bf16 where the hardware does bf16 natively, else fp32 (CPU) or fp16 (older GPUs).
    kind: the device's type, 'cuda' or 'cpu'."""
    if dtype != "auto":
        return dtype
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if kind == "cpu" and cpu_has_native_bf16():
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
# This process's runtime: one process per GPU under torchrun (DDP), else a single one


@dataclass
class Runtime:
    ddp: bool
    rank: int  # this process's number among all of them (0 under a single process)
    local_rank: int  # its number on its own machine
    world_size: int  # how many processes there are
    device: str
    device_type: str  # 'cuda', 'cpu' or 'mps': what autocast and the optimizer want
    dtype: str  # 'float32', 'bfloat16' or 'float16'

    @property
    def master(self) -> bool:
        """The process that prints, logs and writes checkpoints."""
        return self.rank == 0

    def autocast(self):
        if self.dtype == "float32":
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=DTYPES[self.dtype])

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()


def single_process(device: str = "cpu", dtype: str = "float32") -> Runtime:
    """The runtime of a plain `python script.py` on one device, without touching the process's global state."""
    return Runtime(ddp=False, rank=0, local_rank=0, world_size=1, device=device, device_type=device_type(device),
                   dtype=dtype)


def setup_runtime(device: str, dtype: str, seed: int) -> Runtime:
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
    return Runtime(ddp, rank, local_rank, world_size, device, kind, pick_dtype(dtype, kind))
