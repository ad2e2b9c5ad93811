"""Run the DATA LOADER section of a training script on its own: the tests and the benchmark check exactly the
lines the trainer runs, not a copy of them."""

import os

import numpy as np
import torch

import common
import data
from errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_loader_section(script: str, **names) -> dict:
    """Execute the lines from '# DATA LOADER:' to '# END OF DATA LOADER' of script and return their namespace
    (get_batch and all). `names` stands in for what those lines use from the rest of the script (settings,
    runtime, model, to_device); by default one CPU process, and batches left on the CPU."""
    path = os.path.join(ROOT, script)
    with open(path) as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# DATA LOADER:"))
    end = lines.index("# END OF DATA LOADER")
    namespace = {"os": os, "np": np, "torch": torch, "data": data, "UserError": UserError,
                 "runtime": common.single_process(), "to_device": torch.from_numpy, **names}
    source = "\n" * start + "\n".join(lines[start:end])  # blank lines first: tracebacks show the real line numbers
    exec(compile(source, path, "exec"), namespace)
    return namespace
