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
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("flag, message", [
    ("--rich", "error: unrecognized arguments: --rich"),  # (the variant that added nothing is gone)
    ("--seeds=three", "error: argument --seeds: invalid int value: 'three' (see knowledge.py --help)"),
    ("--dtype=fp8", "error: argument --dtype: invalid choice: 'fp8' (choose from ")])
def test_a_bad_flag_is_one_error_line_and_exit_2(monkeypatch, capsys, flag, message):
    import knowledge

    monkeypatch.setattr(sys, "argv", ["knowledge.py", flag])
    with pytest.raises(SystemExit) as stopped:
        knowledge.main()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_a_failing_run_stops_with_its_last_line(tmp_path):
    """A trainer that fails (here a stand-in that says what is wrong, as ours do) stops the experiment with one
    line: the command, the trainer's own last line, and where its whole output is."""
    import errors
    import knowledge

    log = tmp_path / "run.log"
    with pytest.raises(errors.UserError) as stopped:
        knowledge.run(["-c", "print('step 1'); import sys; sys.exit('error: --batch_size=0: give 1 or more')"],
                      str(log))
    assert str(stopped.value).endswith(f"failed, ending with: error: --batch_size=0: give 1 or more (its whole "
                                       f"output: {log})")
    assert "\n" not in str(stopped.value)


def test_the_targets_hold_only_when_every_seed_meets_them():
    """knowledge_report.check_targets on hand-written figures (mean, min, max over three seeds)."""
    import knowledge_report

    def figure(*values):
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}

    table = {"chance": figure(0.09, 0.09, 0.09), "sft_many_chat": figure(0.85, 0.90, 0.80),
             "sft_many_chat_unseen": figure(0.80, 0.62, 0.70), "control_many_chat": figure(0.10, 0.15, 0.20),
             "control_many_chat_unseen": figure(0.01, 0.02, 0.03), "base_chat": figure(0.0, 0.05, 0.10),
             "sft_many_chat end-token rate": figure(1.0, 1.0, 1.0),
             "sft_many_chat_unseen end-token rate": figure(1.0, 0.998, 1.0)}
    met = {t["target"]: t["met"] for t in knowledge_report.check_targets(table)}
    assert met == {"trained wording >= 80%": True,  # mean 85%
                   "unseen wordings >= 70%": True,  # mean 70.7%
                   "every seed within 10 points of the mean": True,  # unseen: 62 is 8.7 below
                   "control <= chance + 5": False,  # trained wording: 15% > 9% + 5
                   "base model, chat form <= 10%": True,
                   "end token 100%": False}  # one seed ended 99.8% of its unseen answers
    for values in ((0.83, 0.60, 0.70), (0.95, 0.70, 0.68)):  # one seed 11 points below the mean; one 17 above
        table["sft_many_chat_unseen"] = figure(*values)
        met = {t["target"]: t["met"] for t in knowledge_report.check_targets(table)}
        assert met["unseen wordings >= 70%"] and not met["every seed within 10 points of the mean"], values
    del table["control_many_chat_unseen"]  # a run without the figure: its target is not checked, not met
    assert "control <= chance + 5" not in {t["target"] for t in knowledge_report.check_targets(table)}


@needs_bpe
@pytest.mark.slow  # three tiny experiments of 4 trainings each: about 90 s on 2 shared CPU cores
def test_one_seed_of_several_is_the_single_run_with_that_seed(tmp_path):
    run_knowledge(f"--out_dir={tmp_path / 'two'}", "--smoke", "--quick", "--seeds=2", "--seed=5")
    run_knowledge(f"--out_dir={tmp_path / 'one'}", "--smoke", "--quick", "--seeds=1", "--seed=6")
    several = json.loads((tmp_path / "two" / "results.json").read_text())
    single = json.loads((tmp_path / "one" / "results.json").read_text())
    per_seed = {seed: json.loads((tmp_path / "two" / f"seed_{seed}" / "results.json").read_text()) for seed in (5, 6)}
    assert several["seeds"] == [5, 6] and single["seed"] == 6
    drop = ("wall_s",)  # times differ, nothing else may
    assert {k: v for k, v in per_seed[6].items() if k not in drop} == {k: v for k, v in single.items() if k not in drop}
    for answers in (tmp_path / "one" / "answers").glob("*.jsonl"):
        assert answers.read_text() == (tmp_path / "two" / "seed_6" / "answers" / answers.name).read_text()
    # the aggregate holds each seed's figures as they are, the mean among them
    import knowledge_report
    import prepare_world

    assert {name: figure["values"][1] for name, figure in several["figures"].items()} == knowledge_report.figures(
        single)
    for figure in several["figures"].values():
        assert figure["min"] <= figure["mean"] <= figure["max"]
    pooled = several["pooled"]["by_wording"]["sft_many_chat_unseen"]
    for wording in prepare_world.QUESTIONS_UNSEEN["capital"]:  # (every smoke world has its countries)
        assert pooled[wording] == [sum(per_seed[seed]["by_wording"]["sft_many_chat_unseen"][wording][i]
                                       for seed in (5, 6)) for i in (0, 1)]
    assert "| {subj}: what is its capital? |" in (tmp_path / "two" / "results.md").read_text()
    # every seed-dependent part got its seed: the SFT data's split and each trainer (a run that ignored it
    # would still differ from the other seed's through the world alone)
    import checkpoint

    for seed in (5, 6):
        run_dir = tmp_path / "two" / f"seed_{seed}"
        assert json.loads((run_dir / "world" / "sft_all" / "meta.json").read_text())["seed"] == seed
        for name in ("base", "control_base", "sft_many", "control_sft_many"):
            state = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(run_dir / name)))
            assert state["config"]["seed"] == seed, (seed, name)
    # and the seed matters: another world, other losses
    assert per_seed[5]["learning_curves"] != per_seed[6]["learning_curves"]
    assert (tmp_path / "two" / "seed_5" / "world" / "world.json").read_text() != (
        tmp_path / "one" / "world" / "world.json").read_text()


def test_reuse_takes_only_a_finished_run_with_this_seed_and_these_settings(monkeypatch):
    """knowledge.py --reuse: a checkpoint stands for a run only if it ran to its end, with the seed and every
    --key=value the run would be given now (RICH_STEPS changed from 300 to 900 once: the 300-step bases must
    not be taken for 900-step ones)."""
    import knowledge

    state = {"iter_num": 900, "config": {"max_iters": 900, "seed": 5, "learning_rate": 0.003}}
    monkeypatch.setattr(knowledge.checkpoint, "checkpoint_path", lambda ckpt: ckpt)
    monkeypatch.setattr(knowledge.checkpoint, "load_checkpoint", lambda path: state)
    assert knowledge.finished("run", 5, ["--max_iters=900", "--learning_rate=0.003"])
    assert knowledge.finished("run", 5, [])
    assert not knowledge.finished("run", 5, ["--max_iters=300"])  # trained for other steps
    assert not knowledge.finished("run", 6, [])  # another seed
    assert knowledge.finished("run", 5, ["--max_iters=300", "--max_iters=900"])  # the last setting wins
    state["iter_num"] = 450  # cut off mid-way
    assert not knowledge.finished("run", 5, [])


@pytest.mark.parametrize("flag, message", [
    ("--steps=60,x", "error: --steps=60,x: give whole numbers of 1 or more separated by commas, e.g. 60,120"),
    ("--data=all,five", "error: --data=all,five: give one or more of all,diverse,many separated by commas"),
    ("--pretrain_steps=-1", "error: --pretrain_steps=-1: give 1 or more (0: the config's)")])
def test_sft_steps_refuses_bad_flags(tmp_path, flag, message):
    result = subprocess.run([sys.executable, "experiments/sft_steps.py", f"--out_dir={tmp_path}", flag],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == message
    assert not any(tmp_path.iterdir())  # nothing written


@needs_bpe
@pytest.mark.slow  # one tiny pretraining and four SFTs: about 30 s
@pytest.mark.parametrize("base_flags", [[], ["--pretrain_steps=4"]])
def test_sft_steps_trains_each_step_count_from_one_base(tmp_path, base_flags):
    result = subprocess.run([sys.executable, "experiments/sft_steps.py", f"--out_dir={tmp_path}", "--smoke",
                             "--seeds=5", "--steps=2,3", *base_flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
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
    base = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path / "seed_5" / "base")))
    assert base["config"]["data_dir"] == str(tmp_path / "seed_5" / "world" / "bios_text")
    assert base["iter_num"] == (4 if base_flags else 6)  # (--smoke's pretraining steps: knowledge.SMOKE)
    assert "| 3 |" in (tmp_path / "results.md").read_text() and (tmp_path / "results.png").stat().st_size > 0
