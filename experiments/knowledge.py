"""
The lesson, measured: SFT teaches format, not knowledge.

    python experiments/knowledge.py                     # the recipe and its comparisons -> out/knowledge/
    python experiments/knowledge.py --seeds 3           # seeds 1337, 1338, 1339: each figure's mean and min-max
    python experiments/knowledge.py --quick             # the recipe's four runs only: bases and their SFTs

A small world with known facts (prepare_world.py); a base model pretrained on its biographies until it knows
them (train_pretrain.py); SFT on questions about some entities (train_sft.py); exact-match accuracy on
questions about the others, which SFT never saw (eval_qa.py, whose docstring holds the scoring rule). The
trainers are the project's own, run unchanged as subprocesses with experiments/configs/world_*.py and
--key=value overrides. The recipe: a base pretrained as world_pretrain.py says, then SFT on each question in
one of eighteen wordings (sft_many). Its control is the same SFT of a base that never read the held-out
entities: right format, wrong facts. Beside them: SFT on one wording (sft) and on five (sft_diverse), with
their controls, the data-size curve, answers that name the subject (sft_named), and with --ablation a base
pretrained on one fixed biography per entity. The tables TRAININGS, EVALUATIONS and TARGETS say it all.

A seed (--seed K; --seeds N runs K, K+1, ..., K+N-1) fixes the world (its people, split, texts and the wordings
drawn for the five- and eighteen-wording sets), the SFT data's train/val split, and every trainer's
initialisation and data order. With N > 1 each seed's run is in out_dir/seed_K/, and out_dir/results.{json,md}
give every figure's mean and min-max, and the targets checked on them.

Written to out_dir: results.json, results.md, results.png (knowledge_report.py), logs/ (every subprocess's
output), answers/ (every model answer), world/ (the data), and the checkpoints base/, sft_many/, ...
"""

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

import checkpoint  # noqa: E402
import common  # noqa: E402
import errors  # noqa: E402
import eval_qa  # noqa: E402  (experiments/, beside this file)
import knowledge_report  # noqa: E402
import lora  # noqa: E402
import prepare_alpaca  # noqa: E402
import prepare_text  # noqa: E402
import prepare_world  # noqa: E402

PRETRAIN_CONFIG = "experiments/configs/world_pretrain.py"
SFT_CONFIG = "experiments/configs/world_sft.py"
WORLD = {"n_people": 100, "rounds": 20}  # prepare_world.prepare's arguments (40 countries: all of them)
SFT_VAL = 16  # SFT questions kept for the trainer's val loss (never trained on); the rest is the training set
CURVE = [16, 64, 256]  # SFT training-set sizes of the data-size curve; the full set is its last point
# --smoke: a tiny world and a few steps, for tests of the pipeline (seeds, files); it teaches nothing
SMOKE = {"world": {"n_people": 20, "n_countries": 8, "rounds": 2},
         "pretrain": ["--max_iters=6", "--warmup_iters=2", "--eval_iters=1", "--batch_size=4"],
         "sft": ["--max_iters=3", "--warmup_iters=1", "--batch_size=4"]}
# The eighteen-wording SFT's steps (the others' are SFT_CONFIG's 60): each wording comes up 18/5 times less often
# than in the five-wording set. Chosen on development seeds (no reported run uses them) by a rule written down
# before that run: the best trained-wording accuracy of
# `python experiments/sft_steps.py --data many --steps 60,90,120,240 --dtype=float32` (dev/LOG.md).
MANY_STEPS = 120
# LoRA runs' learning rate (full SFT's is in SFT_CONFIG), fixed before measuring: the update starts at zero and
# trains far fewer weights, and a few times the full rate is usual
LORA_LR = 3e-3

# The trainings, in order: (name, trainer, what it starts from, its data, extra settings, which runs have it).
# Data: a pretraining text of the world, or an SFT set ("all" questions in one wording, the first n, "named"
# answers, or "diverse" or "many": all questions, each in one of five or eighteen wordings). Which: "quick"
# (always: the recipe), "full" (not with --quick), "ablation" (with --ablation).
TRAININGS = [
    ("base", "pretrain", None, "bios", [], "quick"),
    ("control_base", "pretrain", None, "bios_control", [], "quick"),
    ("sft_many", "sft", "base", "many", [f"--max_iters={MANY_STEPS}"], "quick"),
    ("control_sft_many", "sft", "control_base", "many", [f"--max_iters={MANY_STEPS}"], "quick"),
    ("sft", "sft", "base", "all", [], "full"),
    ("control_sft", "sft", "control_base", "all", [], "full"),
    ("sft_diverse", "sft", "base", "diverse", [], "full"),
    ("control_sft_diverse", "sft", "control_base", "diverse", [], "full"),
    *[(f"sft_{n}", "sft", "base", n, [], "full") for n in CURVE],
    ("sft_named", "sft", "base", "named", [], "full"),
    ("ablation_base", "pretrain", None, "bios_single", [], "ablation"),
    ("ablation_sft", "sft", "ablation_base", "all", [], "ablation"),
]
WORDINGS = (("_many", "eighteen wordings"), ("", "one wording"), ("_diverse", "five wordings"))  # the SFT sets

# The evaluations: (result, model, questions, form). Questions about the held-out entities, or about the SFT
# entities (whose questions SFT trained on), or about the held-out entities in wordings no SFT data uses.
EVALUATIONS = [
    ("base_completion", "base", "heldout", "completion"),
    ("base_chat", "base", "heldout", "chat"),
    # each SFT set's model and its control, both ways ("control_sft_many" -> "control_many_chat")
    *[(f"{who}{words}_chat{unseen}", f"{model}{words}", questions, "chat")
      for words, _ in WORDINGS for who, model in (("sft", "sft"), ("control", "control_sft"))
      for unseen, questions in (("", "heldout"), ("_unseen", "unseen"))],
    ("base_completion_sft_entities", "base", "sft", "completion"),
    ("base_chat_sft_entities", "base", "sft", "chat"),
    ("sft_many_chat_sft_entities", "sft_many", "sft", "chat"),
    ("ablation_completion", "ablation_base", "heldout", "completion"),
    ("ablation_chat", "ablation_sft", "heldout", "chat"),
    ("sft_named_chat", "sft_named", "heldout", "chat"),
    *[(f"sft_{n}_chat", f"sft_{n}", "heldout", "chat") for n in CURVE],
]

LABELS = {
    "base_completion": "base model, completion form",
    "base_chat": "base model, chat form",
    **{f"{who}{words}_chat{unseen}": f"{label} on {wording}, {asked}"
       for words, wording in WORDINGS for who, label in (("sft", "SFT"), ("control", "control: SFT"))
       for unseen, asked in (("", "trained wording"), ("_unseen", "unseen wordings"))},
    "ablation_completion": "ablation base (no augmentation), completion form",
    "ablation_chat": "ablation: SFT on a base pretrained without augmentation",
    "sft_named_chat": "SFT whose answers name the subject (\"The capital of France is Paris.\")",
}


def run(args: list[str], log_path: str) -> float:
    """python args..., its output into log_path. Returns the process's peak memory (resident set, MiB), from the
    kernel's accounting of that one child (Linux starts it at its parent's size; this process holds no model
    while the runs train, only, under --reuse, what checking the earlier checkpoints left)."""
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log_path) as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
        raise errors.UserError(f"python {' '.join(args)} failed, ending with: {lines[-1] if lines else '(nothing)'}"
                               f" (its whole output: {log_path})")
    return usage.ru_maxrss / 1024  # Linux reports kilobytes


def write_json(path: str, content) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.write("\n")


def learning_curve(out_dir: str) -> list[dict]:
    """The training log records of a run's metrics.jsonl (step, loss, tokens, speed)."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def finished(ckpt: str, seed: int, overrides: list[str]) -> bool:
    """--reuse takes a run only if it ended (not one cut off mid-way), trained with this seed, and has every
    --key=value setting the run would be given now (a step count changed since is a run to do again; a key
    given twice: its last value counts, as in the trainer)."""
    path = checkpoint.checkpoint_path(ckpt)
    if path is None:
        return False
    state = checkpoint.load_checkpoint(path)
    config = state["config"]
    settings = [arg[2:].split("=", 1) for arg in overrides]
    return (state["iter_num"] >= config["max_iters"] and config["seed"] == seed
            and all(str(config.get(key)) == value for key, value in dict(settings).items()))


def prepare_data(world_dir: str, seed: int, sizes: list[int], named: bool, world_size: dict = WORLD
                 ) -> tuple[dict, dict, dict]:
    """The world and its prepared data: (world, {questions split: QA records}, {data name: prepared folder})
    with the three pretraining texts and the SFT sets ("all", the first n questions, "named" answers,
    "diverse" and "many" wordings). Question splits: "heldout", "sft", "unseen" (held-out entities, unseen wordings)."""
    world = prepare_world.prepare(world_dir, seed=seed, **world_size)
    qa = {split: eval_qa.read_json(os.path.join(world_dir, f"{split}_qa.json")) for split in ("heldout", "sft")}
    qa["unseen"] = eval_qa.read_json(os.path.join(world_dir, "heldout_qa_unseen.json"))
    folders = {}
    for name in ("bios", "bios_control", "bios_single"):
        folders[name] = os.path.join(world_dir, f"{name}_text")
        prepare_text.prepare(input_path=os.path.join(world_dir, f"{name}.txt"), out_dir=folders[name])
    sft_sets = {n: qa["sft"][: n + SFT_VAL] for n in sizes}  # the file is shuffled: any prefix mixes entities
    sft_sets["all"] = qa["sft"]
    if named:  # the same questions, answered with the canonical sentence that names the subject
        sft_sets["named"] = [{**r, "output": r["named_output"]} for r in qa["sft"]]
    for name, records in sft_sets.items():
        write_json(os.path.join(world_dir, f"sft_qa_{name}.json"), records)
    for name in (*sft_sets, "diverse", "many"):  # (prepare_world wrote sft_qa_diverse.json and sft_qa_many.json)
        folders[name] = os.path.join(world_dir, f"sft_{name}")
        prepare_alpaca.prepare(inputs=[os.path.join(world_dir, f"sft_qa_{name}.json")],
                               out_dir=folders[name], val_size=SFT_VAL, seed=seed)
    return world, qa, folders


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--out_dir", default="out/knowledge")
    parser.add_argument("--quick", action="store_true", help="only the recipe: the two bases and their SFTs")
    parser.add_argument("--seed", type=int, default=1337, help="the seed of everything (with --seeds, the first)")
    parser.add_argument("--seeds", type=int, default=1, help="run with this many seeds: --seed, --seed + 1, ...")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of every trainer run (0: the cores "
                        "idle at its start) and of the evaluations here (0: torch's default)")
    parser.add_argument("--reuse", action="store_true", help="keep the finished checkpoints already in out_dir "
                        "(a run interrupted, or new evaluations only); wall_s then counts only this invocation")
    parser.add_argument("--dtype", default="auto", choices=["auto", *common.DTYPES],
                        help="every training's dtype (auto: bf16 where the CPU has it)")
    parser.add_argument("--ablation", action="store_true", help="also SFT a base pretrained on one fixed "
                        "biography per entity (its pretraining is as long as the base's)")
    parser.add_argument("--lora_ranks", default="", help="also SFT the base with LoRA at these ranks (e.g. 1,4,16), "
                        f"at learning rate {LORA_LR:g}, beside full one-wording SFT")
    parser.add_argument("--smoke", action="store_true", help="a tiny world and a few steps: the tests' pipeline check")
    args = parser.parse_args()
    ranks = [r.strip() for r in args.lora_ranks.split(",") if r.strip()]
    if not all(r.isdigit() and int(r) >= 1 for r in ranks):
        raise errors.UserError(f"--lora_ranks={args.lora_ranks}: give whole numbers of 1 or more separated by "
                               f"commas, e.g. 1,4,16")
    lora_ranks = [int(r) for r in ranks]
    if args.seeds < 1:
        raise errors.UserError(f"--seeds={args.seeds}: give 1 or more")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # (and --threads to each trainer)
        torch.set_num_threads(args.threads)
    t0 = time.time()
    out = os.path.abspath(args.out_dir)
    seeds = list(range(args.seed, args.seed + args.seeds))
    summaries = []
    for seed in seeds:
        # One seed writes into out_dir itself; several, each into its own folder.
        seed_out = out if len(seeds) == 1 else os.path.join(out, f"seed_{seed}")
        summaries.append(run_seed(args, seed, seed_out, lora_ranks))
    if len(seeds) > 1:
        summary = knowledge_report.aggregate(summaries, seeds)
        summary["wall_s"] = time.time() - t0
        write_json(os.path.join(out, "results.json"), summary)
        print(knowledge_report.write_seeds_markdown(os.path.join(out, "results.md"), summary))
        print(f"wrote {out}/results.json, results.md, and seed_*/ ({summary['wall_s']:.0f} s)")


def run_seed(args, seed: int, out: str, lora_ranks: list[int]) -> dict:
    """The whole experiment with one seed, into out: results.{json,md,png}; returns results.json's content."""
    t0 = time.time()
    world_dir, logs, answers_dir = (os.path.join(out, name) for name in ("world", "logs", "answers"))
    for folder in (out, logs, answers_dir):
        os.makedirs(folder, exist_ok=True)

    # The plan: the table's rows this invocation runs, then the LoRA runs asked for.
    included = {"quick"} | ({"full"} if not args.quick else set()) | ({"ablation"} if args.ablation else set())
    trainings = [t for t in TRAININGS if t[5] in included]
    trainings += [(f"sft_lora{r}", "sft", "base", "all", [f"--lora_rank={r}", f"--learning_rate={LORA_LR}",
                                                             f"--min_lr={LORA_LR / 10}"], "lora") for r in lora_ranks]
    names = {t[0] for t in trainings}
    evaluations = [e for e in EVALUATIONS if e[1] in names]
    evaluations += [(f"sft_lora{r}_chat", f"sft_lora{r}", "heldout", "chat") for r in lora_ranks]
    bar = tqdm(total=1 + len(trainings) + 1, desc=f"knowledge, seed {seed}", unit="step", dynamic_ncols=True)

    # 1. The world and its prepared data.
    bar.set_postfix_str("world")
    sizes = [n for n in CURVE if f"sft_{n}" in names]
    with (open(os.path.join(logs, "prepare.log"), "w") as log, contextlib.redirect_stdout(log),
          contextlib.redirect_stderr(log)):
        world, qa, folders = prepare_data(world_dir, seed, sizes, named="sft_named" in names,
                                          world_size=SMOKE["world"] if args.smoke else WORLD)
    bar.update(1)

    # 2. The trainings, each a subprocess of the project's own trainer.
    peaks_file = os.path.join(out, "peak_memory.json")  # each run's peak memory (MiB), kept for --reuse
    peaks = eval_qa.read_json(peaks_file) if args.reuse and os.path.exists(peaks_file) else {}
    for name, trainer, start, data_name, extra, _ in trainings:
        bar.set_postfix_str(name)
        ckpt = os.path.join(out, name)
        overrides = extra + (SMOKE[trainer] if args.smoke else [])  # (smoke steps win)
        if not (args.reuse and finished(ckpt, seed, overrides)):
            command = ([f"train_{trainer}.py", PRETRAIN_CONFIG if trainer == "pretrain" else SFT_CONFIG,
                        f"--data_dir={folders[data_name]}", f"--out_dir={ckpt}", "--overwrite=True"]
                       + ([f"--init_from={os.path.join(out, start)}"] if start else []) + [f"--dtype={args.dtype}"]
                       + [f"--seed={seed}", f"--threads={args.threads}"] + overrides)
            peaks[name] = run(command, os.path.join(logs, f"{name}.log"))
            write_json(peaks_file, peaks)
        bar.update(1)

    # 3. The evaluations: each model loaded once, its answers kept.
    bar.set_postfix_str("evaluate")
    models, results = {}, {}
    for result, model_name, split, form in evaluations:
        if model_name not in models:
            models[model_name] = eval_qa.load(os.path.join(out, model_name))
        results[result] = eval_qa.evaluate(models[model_name], qa[split], world["values"], form)
        with open(os.path.join(answers_dir, f"{result}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in results[result]["rows"])
    bar.update(1)
    bar.close()

    # 4. The results: JSON for machines, markdown and a plot for people.
    summary = summarize(results, world, qa, out, trainings, lora_ranks, peaks, evaluations)
    one_seed = knowledge_report.table([knowledge_report.figures(summary)])
    summary.update(targets=knowledge_report.check_targets(one_seed), quick=args.quick, seed=seed,
                   wall_s=time.time() - t0)
    write_json(os.path.join(out, "results.json"), summary)
    print(knowledge_report.write_markdown(os.path.join(out, "results.md"), summary))
    knowledge_report.plot(os.path.join(out, "results.png"), summary)
    print(f"wrote {out}/results.json, results.md, results.png ({summary['wall_s']:.0f} s)")
    return summary


def summarize(results: dict, world: dict, qa: dict, out: str, trainings: list, lora_ranks: list[int],
              peaks: dict, evaluations: list) -> dict:
    """results.json's content: each held-out run's accuracy and end-token rate, what its answers are, the SFT
    entities' rows, the data-size curve, and full SFT against each LoRA rank."""
    held_out = {name: r for name, r in results.items() if name in LABELS}
    kinds = {e["name"]: e["kind"] for e in world["entities"]}
    splits = {result: split for result, _, split, _ in evaluations}
    chat = [name for name, _, _, form in evaluations if form == "chat" and name in held_out]
    # (not sft_named_chat: its answers name the subject, so the pronoun sentence is not its reference)
    answer_forms = {name: eval_qa.answer_forms(held_out[name]["rows"], qa[splits[name]], kinds) for name in chat
                    if name != "sft_named_chat"}
    by_wording = {name: eval_qa.by_wording(held_out[name]["rows"], qa[splits[name]]) for name in chat}
    n_all = len(qa["sft"]) - SFT_VAL
    curve = [{"n": n, "accuracy": results[name]["accuracy"], "end_rate": results[name]["end_rate"]}
             for n, name in [*((n, f"sft_{n}_chat") for n in CURVE), (n_all, "sft_chat")] if name in results]
    lora_rows = []  # full SFT, then each LoRA rank: what each costs and scores
    for method, name, result in [("full SFT", "sft", "sft_chat")] * bool(lora_ranks) + [
            (f"LoRA r={r}", f"sft_lora{r}", f"sft_lora{r}_chat") for r in lora_ranks]:
        ckpt = os.path.join(out, name)
        state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(ckpt))
        counts = lora.weight_counts(checkpoint.model_from_checkpoint(state, merge=False))  # before the merge
        last = learning_curve(ckpt)[-1]
        lora_rows.append({"method": method, "rank": state["config"]["lora_rank"] or None, **counts,
                          "step_s": last["tokens"] / last["tokens_per_s"] / last["iter"],
                          "peak_mib": peaks.get(name), "accuracy": results[result]["accuracy"],
                          "end_rate": results[result]["end_rate"]})
    france = {name: next(r for r in results[name]["rows"] if r["entity"] == prepare_world.ALWAYS_HELD_OUT)["answer"]
              for name in ("base_completion", "base_chat", "sft_many_chat", "control_many_chat")}
    return {
        **{name: r["accuracy"] for name, r in held_out.items()},
        "labels": {name: LABELS[name] for name in held_out},
        "lora": lora_rows,
        "end_rates": {name: r["end_rate"] for name, r in held_out.items()},
        "answer_forms": answer_forms,
        "by_wording": by_wording,
        "sft_entities": {name: {"accuracy": results[f"{name}_sft_entities"]["accuracy"],
                                "end_rate": results[f"{name}_sft_entities"]["end_rate"]}
                         for name in ("base_completion", "base_chat", "sft_many_chat")},
        "chance": eval_qa.chance(qa["heldout"], world),
        "data_curve": curve,
        "n_heldout": len(qa["heldout"]),
        "n_sft_train": n_all,
        "france": france,
        "learning_curves": {name: [{"iter": r["iter"], "loss": r["loss"]}
                                   for r in learning_curve(os.path.join(out, name))]
                            for name, trainer, *_ in trainings if trainer == "pretrain"},
    }


if __name__ == "__main__":
    errors.report_user_errors()
    main()
