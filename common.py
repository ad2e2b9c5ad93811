"""
The runtime the scripts share: where and in what precision to run, on how many threads, with which kernels,
one process or several (DDP), and how a run stops on a signal. It imports nothing of this project but
errors.py. Checkpoints live in checkpoint.py, the data formats in data.py, metrics in metrics.py.
"""

import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from errors import UserError

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


def idle_cores(seconds: float = 0.2) -> float | None:
    """How many of this machine's cores sat idle over the next `seconds` (from /proc/stat); None where that
    cannot be read (not Linux)."""

    def idle_and_total():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]  # the first line: all cores together
        return ticks[3] + ticks[4], sum(ticks)  # idle and iowait; everything

    try:
        idle_0, total_0 = idle_and_total()
        time.sleep(seconds)
        idle_1, total_1 = idle_and_total()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (idle_1 - idle_0) / max(total_1 - total_0, 1)


def pick_threads(threads: int, processes_here: int = 1) -> int:
    """torch's CPU threads: `threads` if given, else the cores idle at the start, shared among this machine's
    processes of the run (never more than torch's own default, the physical cores). More threads than idle
    cores can make every thread wait for the others, and a step several times slower (BENCHMARKS.md, (k))."""
    if threads < 0:
        raise UserError(f"threads={threads}: give a count of threads, or 0 for the cores idle at the start")
    if threads > 0:
        return threads
    idle = idle_cores()
    cores = torch.get_num_threads() if idle is None else min(torch.get_num_threads(), round(idle))
    return max(1, cores // processes_here)


def pick_kernels(attention: str, loss_path: str, device_type: str, compile: bool, dropout: float,
                 eval_only: bool) -> tuple[str, str]:
    """The run's attention for packed rows and its loss path (model.GPTConfig's fields of the same names).
    'auto': compiling on a GPU, FlexAttention (which skips the blocks a document mask hides) and the fused
    loss (one F.cross_entropy that the compiler fuses); elsewhere SDPA with a boolean mask, on every device,
    and the chunked loss, which computes no logit without a target. A choice that cannot run is refused."""
    for name, value, choices in (("attention", attention, ("auto", "sdpa", "flex")),
                                 ("loss_path", loss_path, ("auto", "chunked", "fused"))):
        if value not in choices:
            raise UserError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    if attention == "auto":
        attention = "flex" if device_type == "cuda" and compile and dropout == 0 else "sdpa"
    if loss_path == "auto":
        loss_path = "fused" if compile else "chunked"
    if attention == "flex" and dropout > 0:
        raise UserError(f"attention=flex: FlexAttention has no dropout (dropout={dropout}); use "
                        f"--attention=sdpa, or --dropout=0.0")
    if attention == "flex" and device_type != "cuda" and not eval_only:
        raise UserError(f"attention=flex: torch {torch.__version__} has no FlexAttention backward on "
                        f"{device_type}; train with --attention=sdpa (or auto), or only evaluate "
                        f"(--eval_only=True)")
    return attention, loss_path


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
    threads: int  # torch's CPU threads in this process

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

    def describe(self) -> str:
        return (f"device {self.device}, dtype {self.dtype}, {self.threads} CPU thread(s), "
                f"{self.world_size} process(es)")


def setup_runtime(device: str, dtype: str, seed: int, threads: int = 0) -> Runtime:
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank, world_size = 0, 0, 1
    device = pick_device(device)
    # CPU processes of one machine share its cores instead of each taking all of them
    torch.set_num_threads(pick_threads(threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    torch.manual_seed(seed + rank)
    kind = device_type(device)
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if kind == "cpu":
        tune_cpu_allocator()
    return Runtime(ddp, rank, local_rank, world_size, device, kind, pick_dtype(dtype, kind),
                   torch.get_num_threads())


# ----------------------------------------------------------------------------------------------------------
# Stopping on a signal


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (what `timeout`, `kill` and job schedulers send) ask the training loop to
    stop after the step it is in, so that it saves where it got to; a second Ctrl-C stops at once. Under
    torchrun every process gets the signal, maybe at another step: requested() makes them agree. restore()
    puts back the handlers that were there before (a trainer run inside another program leaves them as found).
    """

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as a shell reports it
    # torchrun passes a terminal's Ctrl-C on to its processes, which got it already: a repeat this soon after
    # the first is that, not a second Ctrl-C
    LAUNCHER_REPEAT_S = 2.0

    def __init__(self, runtime: Runtime):
        self.received, self.received_at, self.rank = None, 0.0, runtime.rank  # the first signal, and when
        self.repeat_s = self.LAUNCHER_REPEAT_S if "TORCHELASTIC_RUN_ID" in os.environ else 0.0
        self.previous = {s: signal.getsignal(s) for s in self.EXIT_CODES}
        for s, handler in self.previous.items():
            if handler != signal.SIG_IGN:  # a job started to ignore Ctrl-C (nohup, `cmd &`) keeps ignoring it
                signal.signal(s, self._handle)
        # The processes agree over the CPU (gloo), so that asking never waits for a GPU's queue of work
        self.group = dist.new_group(backend="gloo") if runtime.ddp else None

    def _handle(self, signum, frame):
        if self.received is not None:
            if signum == signal.SIGINT and time.monotonic() - self.received_at > self.repeat_s:
                raise KeyboardInterrupt  # the second Ctrl-C: at once
            return
        if self.rank == 0:
            print(f"\n{signal.Signals(signum).name}: stopping after this step, to save it (a second Ctrl-C "
                  f"stops at once)", file=sys.stderr, flush=True)
        self.received, self.received_at = signum, time.monotonic()

    def requested(self) -> bool:
        """Whether to stop after this step: on every process alike (a collective under DDP: call on all)."""
        if self.group is not None:
            flag = torch.tensor(self.received or 0)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            if int(flag) and self.received is None:  # another process got one: stop here too
                self.received, self.received_at = int(flag), time.monotonic()
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES[self.received]

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
