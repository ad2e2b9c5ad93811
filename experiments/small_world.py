"""
One attempt at a scaled-down knowledge experiment: a smaller world and a cheaper base model, to see whether
the lesson still shows in the time a fast test has (experiments/README.md, "The CI test", has the table).

    python experiments/small_world.py --n_countries=40 --n_people=100 --person_attributes=birth_city \
        --pretrain="--n_embd=64 --block_size=32 --batch_size=8 --max_iters=500"

makes the world (prepare_world.py), pretrains a base model on it (train_pretrain.py configs/world_pretrain.py
plus the --pretrain overrides), SFTs it (train_sft.py configs/world_sft.py plus --sft), and prints what a
table row needs: each run's seconds, the final training loss, and exact match and end-token rate
(eval_qa.py's rule) of the base model on held-out questions (completion and chat form) and of the SFT model
(chat form, on held-out questions and on its own entities'). Only the main pair, no control: a scaled-down
run is useful only if its SFT model answers held-out questions well, which is asked first.
"""

import argparse
import contextlib
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import knowledge  # noqa: E402  (experiments/knowledge.py, beside this file: its run() and learning_curve())

import eval_qa  # noqa: E402
import prepare_alpaca  # noqa: E402
import prepare_text  # noqa: E402
import prepare_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--out_dir", default="out/small_world")
    parser.add_argument("--n_countries", type=int, default=12)
    parser.add_argument("--n_people", type=int, default=12)
    parser.add_argument("--person_attributes", default=",".join(prepare_world.PERSON_VALUES))
    parser.add_argument("--pretrain", default="", help="--key=value overrides of configs/world_pretrain.py")
    parser.add_argument("--sft", default="", help="--key=value overrides of configs/world_sft.py")
    parser.add_argument("--sft_val", type=int, default=8, help="SFT questions kept for the val loss")
    args = parser.parse_args()
    attributes = tuple(a.strip() for a in args.person_attributes.split(",") if a.strip())
    out = os.path.abspath(args.out_dir)
    world_dir, logs = os.path.join(out, "world"), os.path.join(out, "logs")
    try:  # a bad world size or attribute is found before anything is written
        world = prepare_world.prepare(world_dir, n_people=args.n_people, n_countries=args.n_countries,
                                      person_attributes=attributes)
    except ValueError as e:
        parser.error(str(e))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        prepare_text.prepare(input_path=os.path.join(world_dir, "bios.txt"), out_dir=os.path.join(out, "text"))
        prepare_alpaca.prepare(input_path=os.path.join(world_dir, "sft_qa.json"),
                               out_dir=os.path.join(out, "sft_data"), val_size=args.sft_val)
    os.makedirs(logs, exist_ok=True)
    base, sft = os.path.join(out, "base"), os.path.join(out, "sft")
    seconds = {}
    for name, command in (
        ("pretrain", ["train_pretrain.py", "configs/world_pretrain.py", f"--data_dir={out}/text", f"--out_dir={base}",
                      *shlex.split(args.pretrain)]),
        ("sft", ["train_sft.py", "configs/world_sft.py", f"--data_dir={out}/sft_data", f"--init_from={base}",
                 f"--out_dir={sft}", *shlex.split(args.sft)]),
    ):
        t0 = time.time()
        knowledge.run(command, os.path.join(logs, f"{name}.log"))
        seconds[name] = time.time() - t0
    final_loss = knowledge.learning_curve(base)[-1]["loss"]
    heldout = eval_qa.read_json(os.path.join(world_dir, "heldout_qa.json"))
    sft_entities = eval_qa.read_json(os.path.join(world_dir, "sft_qa.json"))  # SFT's own (val ones too)
    base_model, sft_model = eval_qa.load(base), eval_qa.load(sft)
    scores = {"base completion": eval_qa.evaluate(base_model, heldout, world["values"], "completion"),
              "base chat": eval_qa.evaluate(base_model, heldout, world["values"], "chat"),
              "SFT chat": eval_qa.evaluate(sft_model, heldout, world["values"], "chat"),
              "SFT chat, SFT entities": eval_qa.evaluate(sft_model, sft_entities, world["values"], "chat")}
    print(f"world: {args.n_countries} countries, {args.n_people} people ({','.join(attributes)}); "
          f"{len(heldout)} held-out questions; chance {eval_qa.chance(heldout, world):.1%}")
    print(f"pretrain {args.pretrain or '(the config)'}: {seconds['pretrain']:.0f} s, final loss {final_loss:.2f}; "
          f"SFT {args.sft or '(the config)'}: {seconds['sft']:.0f} s (logs in {logs})")
    print(" | ".join(f"{name} {r['accuracy']:.1%} (end {r['end_rate']:.0%})" for name, r in scores.items()))


if __name__ == "__main__":
    main()
