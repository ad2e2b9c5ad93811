"""
The knowledge experiment's results, for people: each figure over the seeds, the recipe's targets checked, the
tables of results.md and the plot of results.png. experiments/knowledge.py measures; this file only reads what
it measured (results.json's content) and shows it.
"""

# The recipe's targets (issue 39): (target, figures, test, bound). Each figure (mean, min and max over the seeds)
# must pass the test: "spread" is the farthest seed from the mean, "over chance" the mean less chance's mean.
TARGETS = [
    ("trained wording >= 80%", ["sft_many_chat"], "mean >=", 0.80),
    ("unseen wordings >= 70%", ["sft_many_chat_unseen"], "mean >=", 0.70),
    ("every seed within 10 points of the mean", ["sft_many_chat", "sft_many_chat_unseen"], "spread <=", 0.10),
    ("control <= chance + 5", ["control_many_chat", "control_many_chat_unseen"], "over chance <=", 0.05),
    ("base model, chat form <= 10%", ["base_chat"], "mean <=", 0.10),
    ("end token 100%", ["sft_many_chat end-token rate", "sft_many_chat_unseen end-token rate"], "min >=", 1.0),
]


def figures(summary: dict) -> dict:
    """A seed's figures, flat: {name: value} for every held-out accuracy and end-token rate, the SFT entities'
    rows, the data-size curve, the answer forms and chance."""
    flat = {"chance": summary["chance"]}
    for name in summary["labels"]:
        flat[name] = summary[name]
        flat[f"{name} end-token rate"] = summary["end_rates"][name]
    for name, r in summary["sft_entities"].items():
        flat[f"{name} (SFT entities)"] = r["accuracy"]
    for point in summary["data_curve"]:
        flat[f"data curve n={point['n']}"] = point["accuracy"]
    for name, forms in summary["answer_forms"].items():
        flat[f"{name} reference sentence"] = forms["reference"]
        for gender, (wrong, n) in forms["pronoun_errors"].items():
            flat[f"{name} pronoun errors, {gender}"] = wrong / max(n, 1)
    for row in summary["lora"]:
        flat[f"{row['method']} (held-out exact match)"] = row["accuracy"]
    return flat


def table(per_seed: list[dict]) -> dict:
    """figures() of each seed -> {name: {"mean", "min", "max", "values"}} (no seed left out)."""
    rows = {}
    for name in per_seed[0]:
        values = [f[name] for f in per_seed]
        rows[name] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "values": values}
    return rows


def aggregate(summaries: list[dict], seeds: list[int]) -> dict:
    """results.json of several seeds: each figure's per-seed values, mean, min and max, the targets checked on
    them, and the counts pooled over the seeds."""
    figures_table = table([figures(s) for s in summaries])
    return {"seeds": seeds, "figures": figures_table, "targets": check_targets(figures_table),
            "labels": summaries[0]["labels"], "pooled": pooled(summaries),
            "wall_s_per_seed": [s["wall_s"] for s in summaries]}


def pooled(summaries: list[dict]) -> dict:
    """Counts summed over the seeds: per run, each wording's [correct, questions] and the pronoun errors by
    gender [wrong, answers] (what a per-seed share hides when a seed has few questions of a kind)."""
    counts = {"by_wording": {}, "pronoun_errors": {}}
    for s in summaries:
        runs = [("by_wording", name, wordings) for name, wordings in s["by_wording"].items()]
        runs += [("pronoun_errors", name, forms["pronoun_errors"]) for name, forms in s["answer_forms"].items()]
        for kind, name, pairs in runs:
            for key, (hits, n) in pairs.items():
                total = counts[kind].setdefault(name, {}).setdefault(key, [0, 0])
                total[0] += hits
                total[1] += n
    return counts


def passes(figure: dict, test: str, bound: float, chance: float) -> bool:
    spread = max(figure["max"] - figure["mean"], figure["mean"] - figure["min"])
    return {"mean >=": figure["mean"] >= bound, "mean <=": figure["mean"] <= bound, "min >=": figure["min"] >= bound,
            "spread <=": spread <= bound, "over chance <=": figure["mean"] - chance <= bound}[test]


def check_targets(figures_table: dict) -> list[dict]:
    """Each target of TARGETS whose figures the run has (table()'s rows; one seed: its own figures):
    {"target", "figures": {name: {"mean", "min", "max"}}, "met"}."""
    checked = []
    for what, names, test, bound in TARGETS:
        if all(name in figures_table for name in names):
            shown = {name: {key: figures_table[name][key] for key in ("mean", "min", "max")} for name in names}
            met = all(passes(f, test, bound, figures_table["chance"]["mean"]) for f in shown.values())
            checked.append({"target": what, "figures": shown, "met": met})
    return checked


def label(results: dict, name: str) -> str:
    """A figure's label: its run's, with what the figure adds ("sft_chat end-token rate")."""
    run = max((n for n in results["labels"] if name.startswith(n)), key=len, default=None)
    return results["labels"][run] + name[len(run):] if run else name


def target_lines(results: dict) -> list[str]:
    lines = ["| target | figures: mean (min-max) | |", "|---|---|---|"]
    for t in results["targets"]:
        shown = "; ".join(f"{label(results, name)} {f['mean']:.1%} ({f['min']:.1%}-{f['max']:.1%})"
                          for name, f in t["figures"].items())
        lines.append(f"| {t['target']} | {shown} | {'met' if t['met'] else '**not met**'} |")
    return lines


def write_text(path: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def write_seeds_markdown(path: str, results: dict) -> str:
    seeds, figures_table = results["seeds"], results["figures"]
    lines = [f"Seeds {', '.join(map(str, seeds))}. The recipe's targets:", "", *target_lines(results), "",
             "Each figure's mean, min-max and per-seed values:", "",
             "| figure | mean | min-max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for name, f in figures_table.items():
        lines.append(f"| {label(results, name)} | {f['mean']:.1%} | {f['min']:.1%}-{f['max']:.1%} | "
                     + " | ".join(f"{v:.1%}" for v in f["values"]) + " |")
    counts = results["pooled"]
    # Each wording against each SFT model (the trained wording, then the unseen ones), summed over the seeds
    columns = [(name, f"{name}_unseen") for name in results["labels"]
               if name.startswith("sft") and f"{name}_unseen" in counts["by_wording"]]
    if columns:
        lines += ["", "Correct answers per question wording, summed over the seeds (held-out entities):", "",
                  "| wording | " + " | ".join(label(results, name) for name, _ in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for wording in [*counts["by_wording"][columns[0][0]], *counts["by_wording"][columns[0][1]]]:
            cells = []
            for name, unseen in columns:
                correct, n = counts["by_wording"][name].get(wording) or counts["by_wording"][unseen][wording]
                cells.append(f"{correct} / {n}")
            lines.append(f"| {wording} | " + " | ".join(cells) + " |")
    lines += ["", "Wrong pronouns, summed over the seeds (answers whose first word is another kind's pronoun):", "",
              "| run | about women | about men |", "|---|---|---|"]
    for name, genders in counts["pronoun_errors"].items():
        lines.append(f"| {label(results, name)} | " + " | ".join(
            f"{wrong} / {n}" for wrong, n in (genders["female"], genders["male"])) + " |")
    lines += ["", f"Wall time: {results['wall_s']:.0f} s ("
              + ", ".join(f"{w:.0f} s" for w in results["wall_s_per_seed"]) + " per seed).", ""]
    return write_text(path, lines)


def write_markdown(path: str, results: dict) -> str:
    lines = [f"Held-out entities: {results['n_heldout']} questions, never in SFT data; SFT trained on "
             f"{results['n_sft_train']} questions. Chance (most frequent value): {results['chance']:.1%}.", "",
             f"The recipe's targets, seed {results['seed']} alone:", "", *target_lines(results), "",
             "| run | held-out exact match | held-out end-token rate |", "|---|---|---|"]
    for name, run_label in results["labels"].items():
        lines.append(f"| {run_label} | {results[name]:.1%} | {results['end_rates'][name]:.1%} |")
    lines += ["", "SFT entities (questions SFT trained on):", "",
              "| run | exact match | end-token rate |", "|---|---|---|"]
    for name, r in results["sft_entities"].items():
        lines.append(f"| {label(results, name)} | {r['accuracy']:.1%} | {r['end_rate']:.1%} |")
    if results["data_curve"]:
        lines += ["", "Data-size curve (one-wording SFT of the base model, held-out entities):", "",
                  "| SFT examples | exact match | end-token rate |", "|---|---|---|"]
        lines += [f"| {p['n']} | {p['accuracy']:.1%} | {p['end_rate']:.1%} |" for p in results["data_curve"]]
    if results["lora"]:
        lines += ["", "Full SFT vs LoRA (one wording, held-out entities; LoRA at knowledge.LORA_LR):", "",
                  "| method | trained weights | exact match | end-token rate | s/step | peak memory |",
                  "|---|---|---|---|---|---|"]
        for row in results["lora"]:
            peak = f"{row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else "not measured (--reuse)"
            lines.append(f"| {row['method']} | {row['trainable']:,} ({row['trainable'] / row['total']:.2%}) | "
                         f"{row['accuracy']:.1%} | {row['end_rate']:.1%} | {row['step_s']:.3f} | {peak} |")
    lines += ["", "France, held out: " + "; ".join(f"{label(results, name)}: {answer!r}"
                                                   for name, answer in results["france"].items()),
              "", f"Wall time: {results['wall_s']:.0f} s.", ""]
    return write_text(path, lines)


def plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(results["labels"])
    ax = axes[0]  # horizontal bars: a run's name stays readable however many runs there are
    ax.barh(range(len(names)), [results[n] for n in names], color="tab:blue")
    ax.axvline(results["chance"], color="gray", linestyle="--", label="chance")
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlim(0, 1)
    ax.set_xlabel("held-out exact match")
    ax.set_title("What each model can answer about held-out entities")
    ax.legend()
    ax = axes[1]
    curve = results["data_curve"]
    ax.plot([p["n"] for p in curve], [p["accuracy"] for p in curve], "o-", label="exact match")
    ax.plot([p["n"] for p in curve], [p["end_rate"] for p in curve], "s--", label="end-token rate")
    ax.set_xscale("log")
    ax.set_xticks([p["n"] for p in curve],  # every other label a line lower: 256 and 314 sit close
                  [("\n" if i % 2 else "") + str(p["n"]) for i, p in enumerate(curve)])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SFT training examples (one wording)")
    ax.set_title("Data-size curve (held-out entities)")
    ax.legend()
    ax = axes[2]
    for name, points in results["learning_curves"].items():
        ax.plot([p["iter"] for p in points], [p["loss"] for p in points], label=name)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("training loss")
    ax.set_title("Pretraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
