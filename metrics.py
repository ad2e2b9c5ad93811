"""
A run's metrics: out_dir/metrics.jsonl, one JSON record a line, which plot.py draws; and the same numbers in
Weights & Biases or TensorBoard when a run asks for them (wandb_log, tensorboard_log: optional packages).

    {"iter": 10, "loss": 2.31, "lr": 0.001, "time_s": 4.2, "tokens": ..., "tokens_per_s": ..., "targets_per_s": ...}
    {"iter": 0, "train_loss": 10.9, "val_loss": 10.9, "eval_s": 1.3}                  (an evaluation)

A new run starts the file afresh. A resumed run keeps what was logged up to the step it resumes from and
appends after it: the steps after it run again, and a curve must not hold them twice.
"""

import importlib
import json
import os
import shutil

from errors import UserError

FILES = ("metrics.jsonl", "tensorboard")  # what this writes in a run's out_dir


class MetricsLog:
    def __init__(self, out_dir: str, config: dict, master: bool = True, resume_step: int | None = None):
        """config: the trainer's settings. resume_step: the step a resumed run starts from (None: a new run).
        Only the master process writes, and an evaluation-only run writes nothing (its line is printed): it
        measures a model, and must not add a point to the curve of the run whose out_dir it names."""
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.writes = master and not config["eval_only"]
        self.wandb_run, self.tensorboard = None, None
        if not self.writes:
            return
        os.makedirs(out_dir, exist_ok=True)
        if resume_step is not None:
            # (a resume always has a step left to train: checkpoint.check_resume refuses one that has not)
            truncate(self.path, resume_step, evaluates_again=resume_step % config["eval_interval"] == 0)
        else:  # a new run's curves start empty
            open(self.path, "w").close()
            shutil.rmtree(os.path.join(out_dir, "tensorboard"), ignore_errors=True)
        if config["wandb_log"]:
            wandb = optional_import("wandb", "wandb_log=True", "wandb")
            name = config["wandb_run_name"] or os.path.basename(os.path.normpath(out_dir))
            self.wandb_run = wandb.init(project=config["wandb_project"], name=name, config=config)
        if config["tensorboard_log"]:
            board = optional_import("torch.utils.tensorboard", "tensorboard_log=True", "tensorboard")
            # a resumed run forgets what was logged after its step, as metrics.jsonl does
            purge = None if resume_step is None else resume_step + 1
            self.tensorboard = board.SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=purge)

    def write(self, record: dict) -> None:
        """One record: its "iter" is the step, every other field a number."""
        if not self.writes:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if k != "iter"}
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=record["iter"])
        if self.tensorboard is not None:
            for name, value in numbers.items():
                self.tensorboard.add_scalar(name, value, record["iter"])

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def optional_import(module: str, setting: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{setting} needs the {package} package: pip install {package}") from None


def truncate(path: str, step: int, evaluates_again: bool) -> None:
    """Forget what was logged after step (those steps run again), and the evaluation at step itself when the
    resumed run repeats it."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the interruption
            repeated = record["iter"] == step and "val_loss" in record and evaluates_again
            if record["iter"] <= step and not repeated:
                kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
