"""plot.py on hand-written metrics.jsonl files shaped like the trainers' (log lines and evaluation lines).

The PNG is checked as a PNG (its signature and size, read by matplotlib's own reader), and the plotted
curves are checked against the numbers in the files, not against plot.py's reading of them.
"""

import json
import os

import matplotlib.image
import pytest
from conftest import as_script

import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder, lines, torn_tail: str = ""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + torn_tail)
    return str(folder)


def log_line(i, tokens=None):
    line = {"iter": i, "loss": 10.0 / (1 + i), "lr": 1e-3, "tokens_per_s": 100.0, "targets_per_s": 30.0}
    return line | ({"tokens": tokens} if tokens is not None else {})


def eval_line(i):
    return {"iter": i, "train_loss": 9.0 / (1 + i), "val_loss": 9.5 / (1 + i)}


def assert_png(path, width_at_least=500):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[1] >= width_at_least and image.std() > 0  # a real picture, not a blank canvas


def curves(ax) -> dict[str, list]:
    """{legend label: [(x, y), ...]} of every line drawn on ax."""
    return {line.get_label(): [tuple(p) for p in line.get_xydata().tolist()] for line in ax.lines}


def test_two_runs_of_different_lengths_one_still_running_one_without_val(tmp_path):
    pre = write_run(tmp_path / "pre", [eval_line(0), log_line(10), log_line(20), eval_line(20), log_line(30)])
    sft = write_run(tmp_path / "sft", [log_line(10), log_line(20)], torn_tail='{"iter": 30, "lo')  # no val, torn
    fig = plot.plot_runs([pre, sft], str(tmp_path / "curves.png"))
    assert_png(tmp_path / "curves.png")
    (ax,) = fig.axes  # no "tokens" field anywhere: steps only
    drawn = curves(ax)
    assert drawn[f"{pre} train"] == [(10, 10 / 11), (20, 10 / 21), (30, 10 / 31)]
    assert drawn[f"{pre} val"] == [(0, 9.5), (20, 9.5 / 21)]
    assert drawn[f"{sft} train"] == [(10, 10 / 11), (20, 10 / 21)]  # the torn line is skipped
    assert drawn[f"{sft} val"] == []


def test_tokens_panel_when_the_log_has_tokens_and_not_for_runs_without(tmp_path):
    new = write_run(tmp_path / "new", [eval_line(0), log_line(10, 1000), log_line(20, 2000), eval_line(20)])
    old = write_run(tmp_path / "old", [log_line(10), eval_line(10)])
    fig = plot.plot_runs([new, old], str(tmp_path / "t.png"))
    assert_png(tmp_path / "t.png", width_at_least=1000)
    steps, tokens = fig.axes
    assert tokens.get_xlabel() == "tokens seen" and steps.get_xlabel() == "step"
    drawn = curves(tokens)
    assert drawn[f"{new} train"] == [(1000, 10 / 11), (2000, 10 / 21)]
    assert drawn[f"{new} val"] == [(0, 9.5), (2000, 9.5 / 21)]  # evaluations at the tokens of their step
    assert drawn[f"{old} (no tokens count in its log)"] == []
    assert curves(steps)[f"{old} val"] == [(10, 9.5 / 11)]


def test_cli_default_output_beside_the_runs(tmp_path, capsys):
    one = write_run(tmp_path / "out" / "a", [log_line(1), eval_line(1)])
    two = write_run(tmp_path / "out" / "b", [eval_line(0)])  # only an evaluation so far
    assert plot.main([one]) == os.path.join(one, "loss.png")
    assert plot.main([one, two]) == str(tmp_path / "out" / "loss_a_b.png")
    assert_png(tmp_path / "out" / "loss_a_b.png")
    assert "wrote" in capsys.readouterr().out


def test_missing_folder_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        as_script(plot.main, [str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and str(tmp_path / "nope") in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        as_script(plot.main, [str(tmp_path / "empty")])
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty"]
