"""
Loss curves of one or more training runs, from the metrics.jsonl each run writes into its out_dir:

    python plot.py out/tiny_alpaca                                  # -> out/tiny_alpaca/loss.png
    python plot.py out/knowledge/base out/knowledge/sft --out curves.png

By default the PNG goes next to the runs: inside the run's folder for one run, in the folder that holds them
for several. Each run has one colour: its training loss (the log lines' "loss") as a thin line, its validation
loss (the evaluations' "val_loss") as dots joined by a line. Steps are on the x-axis; when the log lines
carry a cumulative "tokens" count, a second panel shows the same curves against tokens seen. A run still
being written (a torn last line), a run with no evaluation yet, and runs of different lengths all plot.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no window: works on a server without a display
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

import errors  # noqa: E402
from errors import UserError  # noqa: E402


def metrics_path(run: str) -> str:
    path = run if os.path.isfile(run) else os.path.join(run, "metrics.jsonl")
    if not os.path.isdir(run) and not os.path.isfile(run):
        raise UserError(f"{run}: no such folder; give a training out_dir (the folder holding metrics.jsonl)")
    if not os.path.isfile(path):
        raise UserError(f"{run}: no metrics.jsonl in this folder; is it a training out_dir? (train_pretrain.py "
                        f"and train_sft.py write it there)")
    return path


def read_run(run: str) -> dict:
    """The points of one run: {"train": {"iter", "loss", "tokens"}, "val": {"iter", "loss", "tokens"}, "skipped"}.

    Lines that are not JSON are skipped and counted: the last line of a run still being written can be torn.
    "tokens" lists are empty when the log lines have no "tokens" field (runs from before it existed).
    """
    train, evals, skipped = [], [], 0
    with open(metrics_path(run), encoding="utf-8", errors="replace") as f:  # a torn line may end mid-character
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(record, dict) or "iter" not in record:
                skipped += 1
            elif "val_loss" in record:
                evals.append(record)
            elif "loss" in record:
                train.append(record)
    has_tokens = bool(train) and all("tokens" in r for r in train)
    points = {"train": {"iter": [r["iter"] for r in train], "loss": [r["loss"] for r in train], "tokens": []},
              "val": {"iter": [r["iter"] for r in evals], "loss": [r["val_loss"] for r in evals], "tokens": []},
              "skipped": skipped}
    if not train:  # no log lines (yet): the evaluations' train-loss estimate is the train curve
        estimates = [r for r in evals if "train_loss" in r]
        points["train"] = {"iter": [r["iter"] for r in estimates], "loss": [r["train_loss"] for r in estimates],
                           "tokens": []}
    if has_tokens:
        points["train"]["tokens"] = [r["tokens"] for r in train]
        # An evaluation's tokens: its own count if it has one, else read off the log lines around its step.
        iters, tokens = [0] + points["train"]["iter"], [0] + points["train"]["tokens"]
        points["val"]["tokens"] = [r.get("tokens", float(np.interp(r["iter"], iters, tokens))) for r in evals]
    return points


def default_out(runs: list[str]) -> str:
    """One run: loss.png inside it. Several: loss_<run>_<run>.png in the folder that holds them."""
    folders = [os.path.dirname(os.path.abspath(r)) if os.path.isfile(r) else os.path.abspath(r) for r in runs]
    if len(folders) == 1:
        return os.path.join(folders[0], "loss.png")
    names = "_".join(os.path.basename(f) for f in folders)
    return os.path.join(os.path.commonpath([os.path.dirname(f) for f in folders]), f"loss_{names}.png")


def plot_runs(runs: list[str], out: str):
    """Draw every run on one figure and save it to out. Returns the matplotlib Figure."""
    data = {run: read_run(run) for run in runs}
    with_tokens = any(points["train"]["tokens"] for points in data.values())
    x_axes = ["iter", "tokens"] if with_tokens else ["iter"]
    fig, axes = plt.subplots(1, len(x_axes), figsize=(7 * len(x_axes), 4.5), squeeze=False)
    for ax, x in zip(axes[0], x_axes, strict=True):
        for i, (run, points) in enumerate(data.items()):
            color = f"C{i % 10}"
            name = run.rstrip("/")
            if x == "tokens" and not points["train"]["tokens"]:
                ax.plot([], [], color=color, label=f"{name} (no tokens count in its log)")
                continue
            train, val = points["train"], points["val"]
            ax.plot(train[x], train["loss"], color=color, linewidth=1, alpha=0.6, label=f"{name} train")
            ax.plot(val[x], val["loss"], color=color, marker="o", markersize=3, label=f"{name} val")
        ax.set_xlabel("step" if x == "iter" else "tokens seen")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    for run, points in data.items():
        if points["skipped"]:
            print(f"note: {run}: skipped {points['skipped']} unreadable line(s) (a run still being written?)")
    return fig


def main(argv=None) -> str:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="training out_dirs (each holding metrics.jsonl), or metrics.jsonl files")
    p.add_argument("--out", help="the PNG to write (default: next to the runs, see above)")
    args = p.parse_args(argv)
    out = args.out or default_out(args.runs)
    plot_runs(args.runs, out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    errors.report_user_errors()
    main()
