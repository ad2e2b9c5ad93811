"""
The lesson, measured: SFT teaches format, not knowledge.

    python experiments/knowledge.py                     # the whole experiment -> out/knowledge/
    python experiments/knowledge.py --quick             # the CI test's run: base and control, and their SFTs

A small world with known facts (prepare_world.py); a base model pretrained on its biographies until it knows
them (train_pretrain.py); SFT on questions about some entities (train_sft.py); exact-match accuracy on
questions about the others, which SFT never saw (eval_qa.py, whose docstring holds the scoring rule). The
trainers are the project's own, run unchanged as subprocesses with configs/world_*.py and --key=value
overrides. Runs:

    base_completion   the base model completes "The capital of France is": does it know the facts?
    base_chat         the base model asked the question in the chat template: can it answer, and stop?
    sft_chat          the SFT model asked about held-out entities: knowledge from pretraining, format from SFT
    control_chat      the same SFT on a base model pretrained without the held-out entities' biographies
    ablation_chat     the same SFT on a base model pretrained without augmentation (one fixed biography each)
    data_curve        SFT on 16, 64, 256 and all QA examples (from the main base model)

Written to out_dir: results.json, results.md, results.png, logs/ (every subprocess's output), answers/ (every
model answer), world/ (the data), and the checkpoints base/, sft/, control_base/, control_sft/, ...
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import common  # noqa: E402
import eval_qa  # noqa: E402
import lora  # noqa: E402
import prepare_alpaca  # noqa: E402
import prepare_text  # noqa: E402
import prepare_world  # noqa: E402

CURVE = [16, 64, 256]  # SFT training-set sizes of the data-size curve; the full set is its last point
LORA_LR = 3e-3  # LoRA runs' learning rate (full SFT's: configs/world_sft.py), fixed before measuring: the
#                 update starts at zero and trains far fewer weights, and a few times the full rate is usual

WORLD = {"n_people": 100, "rounds": 20}  # prepare_world.prepare's arguments (40 countries: all of them)
SFT_VAL = 16  # SFT questions kept for the trainer's val loss (never trained on); the rest is the training set


def run(args: list[str], log_path: str) -> float:
    """python args..., its output into log_path; stop with the log's tail if it fails. Returns the process's
    peak memory (resident set, MiB), from the kernel's accounting of that one child. (Linux starts a child's
    count at its parent's size; this process holds no model while the runs train, only, under --reuse, what
    checking the earlier checkpoints left, far below any run's own peak, which is what shows.)"""
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"python {' '.join(args)} failed; the end of {log_path}:\n{tail}")
    return usage.ru_maxrss / 1024  # Linux reports kilobytes


def write_json(path: str, content) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.write("\n")


def learning_curve(out_dir: str) -> list[dict]:
    """The training loss records of a run's metrics.jsonl."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{"iter": r["iter"], "loss": r["loss"]} for r in records if "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--out_dir", default="out/knowledge")
    parser.add_argument("--quick", action="store_true",
                        help="the CI test's run: only base and control, and their SFTs (same world, same recipe: "
                             "a smaller one did not learn its facts in less time, see experiments/README.md)")
    parser.add_argument("--seed", type=int, default=1337, help="the world's seed")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of every run (0 = torch's default); 1 is faster on a machine shared with "
                             "other jobs, where threads waiting for each other waste the cores")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the checkpoints already in out_dir (a run interrupted, or new evaluations only); "
                             "wall_s then counts only this invocation")
    parser.add_argument("--no_ablation", action="store_true", help="skip the ablation (its pretraining is long)")
    parser.add_argument("--lora_ranks", default="",
                        help="also SFT the main base model with LoRA at these ranks (e.g. 1,4,16), at learning rate "
                             f"{LORA_LR:g}, and compare with full SFT")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the trainers inherit it
        torch.set_num_threads(args.threads)
    # The runs beyond base and control (--quick runs only those)
    scale = {"ablation": not (args.quick or args.no_ablation), "curve": not args.quick, "named": not args.quick}
    t0 = time.time()
    out = os.path.abspath(args.out_dir)
    world_dir, logs, answers_dir = (os.path.join(out, name) for name in ("world", "logs", "answers"))
    for folder in (out, logs, answers_dir):
        os.makedirs(folder, exist_ok=True)

    def finished(ckpt: str) -> bool:
        """--reuse takes a run only if it ended, not one cut off mid-way."""
        path = common.checkpoint_path(ckpt)
        if path is None:
            return False
        checkpoint = common.load_checkpoint(path)
        return checkpoint["iter_num"] >= checkpoint["config"]["max_iters"]

    peaks_file = os.path.join(out, "peak_memory.json")  # each run's peak memory (MiB), kept for --reuse
    peaks = eval_qa.read_json(peaks_file) if args.reuse and os.path.exists(peaks_file) else {}

    def train(name: str, command: list[str]) -> str:
        ckpt = os.path.join(out, name)
        if not (args.reuse and finished(ckpt)):
            peaks[name] = run([*command, f"--out_dir={ckpt}"], os.path.join(logs, f"{name}.log"))
            write_json(peaks_file, peaks)
        return ckpt

    def pretrain(name: str, text_dir: str) -> str:
        return train(name, ["train_pretrain.py", "configs/world_pretrain.py", f"--data_dir={text_dir}"])

    def sft(name: str, base: str, data_dir: str, *extra: str) -> str:
        return train(name, ["train_sft.py", "configs/world_sft.py", f"--init_from={base}", f"--data_dir={data_dir}",
                            *extra])

    models, trained = {}, {}  # read once per checkpoint folder: the model to ask, and the weights its run trained

    def load(ckpt: str):
        if ckpt not in models:
            model = common.model_from_checkpoint(common.load_checkpoint(common.checkpoint_path(ckpt)), merge=False)
            trained[ckpt] = common.weight_counts(model)
            models[ckpt] = lora.merge_lora(model).eval()  # LoRA's adapters folded in (nothing to do otherwise)
        return models[ckpt]

    def run_stats(name: str, ckpt: str) -> dict:
        """What a training run cost: weights trained, seconds per step, peak memory."""
        load(ckpt)
        with open(os.path.join(ckpt, "metrics.jsonl")) as f:
            last = [r for r in map(json.loads, f) if "loss" in r][-1]
        return {**trained[ckpt], "step_s": last["tokens"] / last["tokens_per_s"] / last["iter"],
                "peak_mib": peaks.get(name)}

    def evaluate(name: str, ckpt: str, split: str, form: str) -> dict:
        result = eval_qa.evaluate(load(ckpt), qa[split], world["values"], form)
        with open(os.path.join(answers_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in result["rows"])
        return result

    # The plan, as a list of steps for one progress bar.
    lora_ranks = [int(r) for r in args.lora_ranks.split(",") if r.strip()]
    steps = ["world", "pretrain base", "pretrain control", *(["pretrain ablation"] if scale["ablation"] else []),
             "SFT", "SFT control", *(["SFT ablation"] if scale["ablation"] else []),
             *([f"SFT on {n}" for n in CURVE] if scale["curve"] else []),
             *(["SFT, named answers"] if scale["named"] else []), *[f"LoRA r={r}" for r in lora_ranks], "evaluate"]
    bar = tqdm(steps, desc="knowledge", unit="step", dynamic_ncols=True)
    step = iter(bar)

    # 1. The world and its prepared data: three pretraining texts, the SFT questions (and subsets).
    bar.set_postfix_str(next(step))
    texts, sft_data = {}, {}
    with (open(os.path.join(logs, "prepare.log"), "w") as log, contextlib.redirect_stdout(log),
          contextlib.redirect_stderr(log)):
        world = prepare_world.prepare(world_dir, seed=args.seed, **WORLD)
        qa = {split: eval_qa.read_json(os.path.join(world_dir, f"{split}_qa.json")) for split in ("heldout", "sft")}
        for name in ("bios", "bios_control", "bios_single"):
            texts[name] = os.path.join(world_dir, f"{name}_text")
            prepare_text.prepare(input_path=os.path.join(world_dir, f"{name}.txt"), out_dir=texts[name])
        sizes = [n for n in CURVE if n < len(qa["sft"]) - SFT_VAL] if scale["curve"] else []
        for n in [*sizes, len(qa["sft"]) - SFT_VAL]:
            subset = os.path.join(world_dir, f"sft_qa_{n}.json")
            write_json(subset, qa["sft"][: n + SFT_VAL])  # the file is shuffled: any prefix mixes entities
            sft_data[n] = os.path.join(world_dir, f"sft_{n}")
            prepare_alpaca.prepare(input_path=subset, out_dir=sft_data[n], val_size=SFT_VAL)
        if scale["named"]:  # the same questions, answered with the canonical sentence that names the subject
            named = [{**r, "output": r["named_output"]} for r in qa["sft"]]
            write_json(os.path.join(world_dir, "sft_qa_named.json"), named)
            sft_data["named"] = os.path.join(world_dir, "sft_named")
            prepare_alpaca.prepare(input_path=os.path.join(world_dir, "sft_qa_named.json"),
                                   out_dir=sft_data["named"], val_size=SFT_VAL)
    n_all = len(qa["sft"]) - SFT_VAL

    # 2. Pretraining: the world; the world without the held-out entities; the world without augmentation.
    bar.set_postfix_str(next(step))
    base = pretrain("base", texts["bios"])
    bar.set_postfix_str(next(step))
    control_base = pretrain("control_base", texts["bios_control"])
    if scale["ablation"]:
        bar.set_postfix_str(next(step))
        ablation_base = pretrain("ablation_base", texts["bios_single"])

    # 3. The same SFT recipe on each base model, then the data-size curve on the main one.
    bar.set_postfix_str(next(step))
    sft_ckpt = sft("sft", base, sft_data[n_all])
    bar.set_postfix_str(next(step))
    control_sft = sft("control_sft", control_base, sft_data[n_all])
    if scale["ablation"]:
        bar.set_postfix_str(next(step))
        ablation_sft = sft("ablation_sft", ablation_base, sft_data[n_all])
    curve_ckpts = {}
    for n in sizes:
        bar.set_postfix_str(next(step))
        curve_ckpts[n] = sft(f"sft_{n}", base, sft_data[n])
    if scale["named"]:
        bar.set_postfix_str(next(step))
        named_sft = sft("sft_named", base, sft_data["named"])
    lora_ckpts = {}
    for r in lora_ranks:
        bar.set_postfix_str(next(step))
        lora_ckpts[r] = sft(f"sft_lora{r}", base, sft_data[n_all], f"--lora_rank={r}", f"--learning_rate={LORA_LR}",
                            f"--min_lr={LORA_LR / 10}")

    # 4. Evaluation: every held-out question, plus the SFT entities' for the main models.
    bar.set_postfix_str(next(step))
    runs = {
        "base_completion": evaluate("base_completion", base, "heldout", "completion"),
        "base_chat": evaluate("base_chat", base, "heldout", "chat"),
        "sft_chat": evaluate("sft_chat", sft_ckpt, "heldout", "chat"),
        "control_chat": evaluate("control_chat", control_sft, "heldout", "chat"),
    }
    seen = {
        "base_completion": evaluate("base_completion_sft_entities", base, "sft", "completion"),
        "base_chat": evaluate("base_chat_sft_entities", base, "sft", "chat"),
        "sft_chat": evaluate("sft_chat_sft_entities", sft_ckpt, "sft", "chat"),
    }
    if scale["ablation"]:
        runs["ablation_completion"] = evaluate("ablation_completion", ablation_base, "heldout", "completion")
        runs["ablation_chat"] = evaluate("ablation_chat", ablation_sft, "heldout", "chat")
    if scale["named"]:
        runs["sft_named_chat"] = evaluate("sft_named_chat", named_sft, "heldout", "chat")
    lora_rows = []  # full SFT, then each LoRA rank: what each costs and scores
    if lora_ranks:
        lora_rows.append({"method": "full SFT", "rank": None, **run_stats("sft", sft_ckpt),
                          "accuracy": runs["sft_chat"]["accuracy"], "end_rate": runs["sft_chat"]["end_rate"]})
    for r, ckpt in lora_ckpts.items():
        result = evaluate(f"sft_lora{r}_chat", ckpt, "heldout", "chat")
        lora_rows.append({"method": f"LoRA r={r}", "rank": r, **run_stats(f"sft_lora{r}", ckpt),
                          "accuracy": result["accuracy"], "end_rate": result["end_rate"]})
    curve = []
    for n in sizes:
        r = evaluate(f"sft_{n}_chat", curve_ckpts[n], "heldout", "chat")
        curve.append({"n": n, "accuracy": r["accuracy"], "end_rate": r["end_rate"]})
    curve.append({"n": n_all, "accuracy": runs["sft_chat"]["accuracy"], "end_rate": runs["sft_chat"]["end_rate"]})
    for _ in step:
        pass
    bar.close()

    # 5. The results: JSON for machines, markdown and a plot for people.
    france = {name: next(r for r in runs[name]["rows"] if r["entity"] == prepare_world.ALWAYS_HELD_OUT)["answer"]
              for name in ("base_completion", "base_chat", "sft_chat")}
    results = {
        **{name: r["accuracy"] for name, r in runs.items()},
        "ablation_chat": runs["ablation_chat"]["accuracy"] if "ablation_chat" in runs else None,
        "lora": lora_rows,
        "end_rates": {name: r["end_rate"] for name, r in runs.items()},
        "sft_entities": {name: {"accuracy": r["accuracy"], "end_rate": r["end_rate"]} for name, r in seen.items()},
        "chance": eval_qa.chance(qa["heldout"], world),
        "sft_end_rate": runs["sft_chat"]["end_rate"],
        "data_curve": curve,
        "n_heldout": len(qa["heldout"]),
        "n_sft_train": n_all,
        "france": france,
        "learning_curves": {name: learning_curve(os.path.join(out, name)) for name in
                            ("base", "control_base", "ablation_base") if os.path.exists(os.path.join(out, name))},
        "quick": args.quick,
        "wall_s": time.time() - t0,
        "base_ckpt": base,
        "sft_ckpt": sft_ckpt,
        "heldout_qa": os.path.join(world_dir, "heldout_qa.json"),
    }
    write_json(os.path.join(out, "results.json"), results)
    print(write_markdown(os.path.join(out, "results.md"), results))
    plot(os.path.join(out, "results.png"), results)
    print(f"wrote {out}/results.json, results.md, results.png ({results['wall_s']:.0f} s)")


LABELS = {
    "base_completion": "base model, completion form",
    "base_chat": "base model, chat form",
    "sft_chat": "SFT model, chat form",
    "control_chat": "control: SFT on a base that never saw the held-out facts",
    "ablation_completion": "ablation base (no augmentation), completion form",
    "ablation_chat": "ablation: SFT on a base pretrained without augmentation",
    "sft_named_chat": "SFT whose answers name the subject (\"The capital of France is Paris.\")",
}


def write_markdown(path: str, results: dict) -> str:
    lines = [f"Held-out entities: {results['n_heldout']} questions, never in SFT data; SFT trained on "
             f"{results['n_sft_train']} questions. Chance (most frequent value): {results['chance']:.1%}.", "",
             "| run | held-out exact match | held-out end-token rate |", "|---|---|---|"]
    for name, label in LABELS.items():
        if results.get(name) is not None:
            lines.append(f"| {label} | {results[name]:.1%} | {results['end_rates'][name]:.1%} |")
    lines += ["", "SFT entities (questions SFT trained on):", "",
              "| run | exact match | end-token rate |", "|---|---|---|"]
    for name, r in results["sft_entities"].items():
        lines.append(f"| {LABELS[name]} | {r['accuracy']:.1%} | {r['end_rate']:.1%} |")
    lines += ["", "Data-size curve (SFT from the main base model, held-out entities):", "",
              "| SFT examples | exact match | end-token rate |", "|---|---|---|"]
    lines += [f"| {p['n']} | {p['accuracy']:.1%} | {p['end_rate']:.1%} |" for p in results["data_curve"]]
    if results["lora"]:
        lines += ["", f"Full SFT vs LoRA (the main base model, held-out entities; LoRA at learning rate {LORA_LR:g}):",
                  "", "| method | trained weights | exact match | end-token rate | s/step | peak memory |",
                  "|---|---|---|---|---|---|"]
        for row in results["lora"]:
            peak = f"{row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "not measured (--reuse)"
            lines.append(f"| {row['method']} | {row['trainable']:,} ({row['trainable'] / row['total']:.2%}) | "
                         f"{row['accuracy']:.1%} | {row['end_rate']:.1%} | {row['step_s']:.3f} | {peak} |")
    lines += ["", f"Wall time: {results['wall_s']:.0f} s.", ""]
    text = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if results["lora"] else 3, figsize=(21 if results["lora"] else 16, 4.5))
    names = [n for n in LABELS if results.get(n) is not None]
    ax = axes[0]
    ax.bar(range(len(names)), [results[n] for n in names], color="tab:blue")
    ax.axhline(results["chance"], color="gray", linestyle="--", label="chance")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out exact match")
    ax.set_title("What each model can answer about held-out entities")
    ax.legend()
    ax = axes[1]
    curve = results["data_curve"]
    ax.plot([p["n"] for p in curve], [p["accuracy"] for p in curve], "o-", label="exact match")
    ax.plot([p["n"] for p in curve], [p["end_rate"] for p in curve], "s--", label="end-token rate")
    ax.set_xscale("log")
    ax.set_xticks([p["n"] for p in curve], [str(p["n"]) for p in curve])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SFT training examples")
    ax.set_title("Data-size curve (held-out entities)")
    ax.legend()
    ax = axes[2]
    for name, points in results["learning_curves"].items():
        ax.plot([p["iter"] for p in points], [p["loss"] for p in points], label=name)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("training loss")
    ax.set_title("Pretraining")
    ax.legend()
    if results["lora"]:
        ax = axes[3]
        rows = results["lora"]
        ax.bar(range(len(rows)), [r["accuracy"] for r in rows], color="tab:green")
        ax.set_xticks(range(len(rows)), [f"{r['method']}\n{r['trainable'] / r['total']:.2%} trained" for r in rows],
                      fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out exact match")
        ax.set_title("Full SFT vs LoRA")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
