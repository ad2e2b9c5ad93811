"""
How long to fine-tune: the knowledge experiment's held-out accuracy against the number of SFT steps.

    python experiments/sft_steps.py                       # seeds 2001-2003, 40 to 240 steps -> out/sft_steps/
    python experiments/sft_steps.py --seeds 2001 --steps 60,120
    python experiments/sft_steps.py --data many          # the eighteen-wording SFT set's own curve
    python experiments/sft_steps.py --pretrain_steps 600 --data many --steps 120   # a base pretrained longer

For each seed: the world, its data and the base model, as experiments/knowledge.py makes them (its functions,
its configs; --pretrain_steps changes the base's steps); then each SFT set asked for (--data)
from that base at each number of steps (everything else as in experiments/configs/world_sft.py, warmup
included), each asked the held-out questions in the trained wording and in the unseen wordings (eval_qa.py's
scoring rule). Also the share of answers that are the reference sentence: the form SFT teaches. The default
seeds are not knowledge.py's (1337 and up), whose figures are reported: world_sft.py's steps were chosen on these
seeds (by earlier scratch runs; dev/LOG.md). Written to out_dir:
results.json, results.md, results.png, and each seed's world, checkpoints and logs in seed_K/.
"""

import contextlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import errors  # noqa: E402
import eval_qa  # noqa: E402  (experiments/, beside this file)
import knowledge  # noqa: E402

# (SFT data, questions asked, the row's name): trained wording on every SFT set, unseen wordings on the diverse ones
ROWS = [("all", "heldout", "one wording, trained wording"), ("diverse", "heldout", "diverse, trained wording"),
        ("diverse", "unseen", "diverse, unseen wordings"), ("many", "heldout", "eighteen, trained wording"),
        ("many", "unseen", "eighteen, unseen wordings")]
TRAINED = {row for _, split, row in ROWS if split == "heldout"}  # the rows whose answers' form is also shown


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise errors.UserError(f"{flag}={text}: give whole numbers of 1 or more separated by commas, e.g. 60,120")
    return values


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--out_dir", default="out/sft_steps")
    parser.add_argument("--seeds", default="2001,2002,2003", help="the worlds (and every run's seed)")
    parser.add_argument("--steps", default="40,60,90,120,240", help="SFT steps (max_iters) to compare")
    parser.add_argument("--data", default="all,diverse",
                        help="SFT sets, comma-separated: all (one wording), diverse (five), many (eighteen)")
    parser.add_argument("--pretrain_steps", type=int, default=0,
                        help="the base model's steps (0: experiments/configs/world_pretrain.py's); given, "
                             "it wins over --smoke's")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of every trainer run (0: the idle "
                        "cores) and of the evaluations here (0: torch's default)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *knowledge.common.DTYPES],
                        help="every training's dtype (auto: bf16 where the CPU has it)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny world: checks the pipeline (the tests), measures nothing; give small --steps")
    args = parser.parse_args()
    seeds, steps = parse_ints(args.seeds, "--seeds"), parse_ints(args.steps, "--steps")
    if args.pretrain_steps < 0:
        raise errors.UserError(f"--pretrain_steps={args.pretrain_steps}: give 1 or more (0: the config's)")
    data_names = list(dict.fromkeys(d.strip() for d in args.data.split(",") if d.strip()))  # each once
    if not data_names or not set(data_names) <= {"all", "diverse", "many"}:
        raise errors.UserError(f"--data={args.data}: give one or more of all,diverse,many separated by commas")
    rows = [r for r in ROWS if r[0] in data_names]
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # (and --threads to each trainer)
        torch.set_num_threads(args.threads)
    out, t0 = os.path.abspath(args.out_dir), time.time()
    table = {row: {n: [] for n in steps} for _, _, row in rows}  # row -> steps -> per-seed figures
    bar = tqdm(total=len(seeds) * (1 + len(data_names) * len(steps)), desc="sft steps", unit="run",
               dynamic_ncols=True)
    for seed in seeds:
        seed_out = os.path.join(out, f"seed_{seed}")
        logs = os.path.join(seed_out, "logs")
        os.makedirs(logs, exist_ok=True)
        with (open(os.path.join(logs, "prepare.log"), "w") as log, contextlib.redirect_stdout(log),
              contextlib.redirect_stderr(log)):
            world, qa, folders = knowledge.prepare_data(os.path.join(seed_out, "world"), seed, [], named=False,
                                                        world_size=knowledge.SMOKE["world"] if args.smoke
                                                        else knowledge.WORLD)
        kinds = {e["name"]: e["kind"] for e in world["entities"]}
        base = os.path.join(seed_out, "base")
        bar.set_postfix_str(f"seed {seed}: base")
        knowledge.run(["train_pretrain.py", knowledge.PRETRAIN_CONFIG, f"--data_dir={folders['bios']}",
                       f"--out_dir={base}", "--overwrite=True", f"--dtype={args.dtype}", f"--seed={seed}",
                       f"--threads={args.threads}",
                       *(knowledge.SMOKE["pretrain"] if args.smoke else []),
                       *([f"--max_iters={args.pretrain_steps}"] if args.pretrain_steps else [])],
                      os.path.join(logs, "base.log"))
        bar.update(1)
        for n in steps:
            for data_name in data_names:
                name = f"sft_{data_name}_{n}"
                bar.set_postfix_str(f"seed {seed}: {name}")
                ckpt = os.path.join(seed_out, name)
                knowledge.run(["train_sft.py", knowledge.SFT_CONFIG, f"--data_dir={folders[data_name]}",
                               f"--out_dir={ckpt}", "--overwrite=True", f"--init_from={base}", f"--dtype={args.dtype}",
                               f"--seed={seed}", f"--threads={args.threads}",
                               *(knowledge.SMOKE["sft"] if args.smoke else []),
                               f"--max_iters={n}"], os.path.join(logs, f"{name}.log"))
                model = eval_qa.load(ckpt)
                for sft_data, split, row in rows:
                    if sft_data == data_name:
                        r = eval_qa.evaluate(model, qa[split], world["values"], "chat")
                        forms = eval_qa.answer_forms(r["rows"], qa[split], kinds)
                        table[row][n].append({"accuracy": r["accuracy"], "reference": forms["reference"],
                                              "end_rate": r["end_rate"]})
                bar.update(1)
    bar.close()
    results = {"seeds": seeds, "steps": steps, "data": data_names,
               "pretrain_steps": args.pretrain_steps or None, "rows": table, "wall_s": time.time() - t0}
    knowledge.write_json(os.path.join(out, "results.json"), results)
    print(write_markdown(os.path.join(out, "results.md"), results))
    plot(os.path.join(out, "results.png"), results)
    print(f"wrote {out}/results.json, results.md, results.png ({results['wall_s']:.0f} s)")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def write_markdown(path: str, results: dict) -> str:
    steps, rows = results["steps"], list(results["rows"])
    trained = [row for row in rows if row in TRAINED]
    lines = [f"Held-out exact match (mean, min-max over seeds {', '.join(map(str, results['seeds']))}), then the "
             "share of answers that are the reference sentence (the form SFT teaches), against SFT steps:", "",
             "| SFT steps | " + " | ".join(rows) + " | " + " | ".join(f"reference sentence ({row})" for row in trained)
             + " |", "|---|" + "---|" * (len(rows) + len(trained))]
    for n in steps:
        cells = []
        for row in rows:
            acc = [f["accuracy"] for f in results["rows"][row][n]]
            cells.append(f"{mean(acc):.1%} ({min(acc):.1%}-{max(acc):.1%})")
        cells += [f"{mean([f['reference'] for f in results['rows'][row][n]]):.1%}" for row in trained]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time: {results['wall_s']:.0f} s.", ""]
    text = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    steps = results["steps"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, figures in results["rows"].items():
        line, = ax.plot(steps, [mean([f["accuracy"] for f in figures[n]]) for n in steps], "o-", label=row)
        if row in TRAINED:  # the reference sentence's share, in the same colour, dashed
            ax.plot(steps, [mean([f["reference"] for f in figures[n]]) for n in steps], "s--",
                    color=line.get_color(), alpha=0.5, label=f"reference sentence ({row})")
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("SFT steps (16 questions each)")
    ax.set_ylabel(f"held-out share, mean of {len(results['seeds'])} seeds")
    ax.set_title("How long to fine-tune")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
