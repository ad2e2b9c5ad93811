"""experiments/knowledge.py --seeds: a run of several seeds is those seeds' single runs, side by side.

Checked on the --smoke world (tiny, a few steps; it learns nothing, but every seed-dependent part runs: the
world, the SFT split, the trainers' initialisation and data order, the evaluation): the seed K + 1 of
`--seeds 2 --seed K` gives exactly the figures, losses and answers of `--seeds 1 --seed K + 1`.
"""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, needs_bpe


def run_knowledge(*args, check=True):
    result = subprocess.run([sys.executable, "experiments/knowledge.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=1800)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_seeds_below_one_are_refused(tmp_path):
    result = run_knowledge(f"--out_dir={tmp_path}", "--seeds=0", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: --seeds=0: give 1 or more"


@needs_bpe
@pytest.mark.slow  # three tiny experiments of 6 trainings each: 125 s on 2 shared CPU cores
def test_one_seed_of_several_is_the_single_run_with_that_seed(tmp_path):
    run_knowledge(f"--out_dir={tmp_path / 'two'}", "--smoke", "--quick", "--seeds=2", "--seed=5")
    run_knowledge(f"--out_dir={tmp_path / 'one'}", "--smoke", "--quick", "--seeds=1", "--seed=6")
    several = json.loads((tmp_path / "two" / "results.json").read_text())
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    per_seed = {seed: json.loads((tmp_path / "two" / f"seed_{seed}" / "results.json").read_text()) for seed in (5, 6)}
    assert several["seeds"] == [5, 6] and single["seed"] == 6
    drop = ("wall_s", "base_ckpt", "sft_ckpt", "heldout_qa")  # times and paths differ, nothing else may
    assert {k: v for k, v in per_seed[6].items() if k not in drop} == {k: v for k, v in single.items() if k not in drop}
    for answers in (tmp_path / "one" / "answers").glob("*.jsonl"):
        assert answers.read_text() == (tmp_path / "two" / "seed_6" / "answers" / answers.name).read_text()
    # the aggregate holds each seed's figures as they are, the mean among them
    import knowledge
    import prepare_world

    assert {name: figure["values"][1] for name, figure in several["figures"].items()} == knowledge.figures(single)
    for figure in several["figures"].values():
        assert figure["min"] <= figure["mean"] <= figure["max"]
    pooled = several["pooled"]["by_wording"]["sft_diverse_chat_unseen"]
    for wording in prepare_world.QUESTIONS_UNSEEN["capital"]:  # (every smoke world has its countries)
        assert pooled[wording] == [sum(per_seed[seed]["by_wording"]["sft_diverse_chat_unseen"][wording][i]
                                       for seed in (5, 6)) for i in (0, 1)]
    assert "| {subj}: what is its capital? |" in (tmp_path / "two" / "results.md").read_text()
    # every seed-dependent part got its seed: the SFT data's split and each trainer (a run that ignored it
    # would still differ from the other seed's through the world alone)
    import checkpoint

    for seed in (5, 6):
        run_dir = tmp_path / "two" / f"seed_{seed}"
        assert json.loads((run_dir / "world" / "sft_all" / "meta.json").read_text())["seed"] == seed
        for name in ("base", "control_base", "sft", "control_sft", "sft_diverse", "control_sft_diverse"):
            state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(run_dir / name)))
            assert state["config"]["seed"] == seed, (seed, name)
    # and the seed matters: another world, other losses
    assert per_seed[5]["learning_curves"] != per_seed[6]["learning_curves"]
    assert (tmp_path / "two" / "seed_5" / "world" / "world.json").read_text() != (
        tmp_path / "one" / "world" / "world.json").read_text()


@pytest.mark.parametrize("flag, message", [
    ("--steps=60,x", "error: --steps=60,x: give whole numbers of 1 or more separated by commas, e.g. 60,120"),
    ("--data=all,five", "error: --data=all,five: give one or more of all,diverse,many separated by commas")])
def test_sft_steps_refuses_bad_flags(tmp_path, flag, message):
    result = subprocess.run([sys.executable, "experiments/sft_steps.py", f"--out_dir={tmp_path}", flag],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == message
    assert not any(tmp_path.iterdir())  # nothing written


@needs_bpe
@pytest.mark.slow  # one tiny pretraining and four SFTs: about 30 s
def test_sft_steps_trains_each_step_count_from_one_base(tmp_path):
    result = subprocess.run([sys.executable, "experiments/sft_steps.py", f"--out_dir={tmp_path}", "--smoke",
                             "--seeds=5", "--steps=2,3"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["steps"] == [2, 3] and results["seeds"] == [5]
    for row in results["rows"].values():
        assert [len(row[str(n)]) for n in (2, 3)] == [1, 1]  # one figure per seed and step count
    import checkpoint

    for n in (2, 3):
        for data in ("all", "diverse"):
            state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path / "seed_5" / f"sft_{data}_{n}")))
            assert state["iter_num"] == n and state["config"]["init_from"] == str(tmp_path / "seed_5" / "base")
    assert "| 3 |" in (tmp_path / "results.md").read_text() and (tmp_path / "results.png").stat().st_size > 0
