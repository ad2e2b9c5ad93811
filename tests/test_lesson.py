"""lesson.ipynb, the hands-on lesson: the notebook is the same cells as its paired source lesson.py (which is what
a reviewer reads, diffs and lints), and, in the slow suite, it runs top to bottom and shows what it claims."""

import json
import os
import re

import jupytext
import pytest
from conftest import ROOT, needs_bpe

NOTEBOOK, SOURCE = os.path.join(ROOT, "lesson.ipynb"), os.path.join(ROOT, "lesson.py")


def notebook_cells(path: str) -> list[tuple[str, str]]:
    """(type, source) of each cell of a .ipynb, read as plain JSON (not through jupytext, the other side)."""
    with open(path, encoding="utf-8") as f:
        return [(cell["cell_type"], "".join(cell["source"])) for cell in json.load(f)["cells"]]


def source_cells(path: str) -> list[tuple[str, str]]:
    """(type, source) of each cell of a percent-format .py, as jupytext reads it."""
    return [(cell.cell_type, cell.source) for cell in jupytext.read(path).cells]


def test_the_notebook_is_its_paired_source():
    """Every cell, code and text, in the same order: an edit to one side alone (lesson.py edited, the notebook
    not synced with `jupytext --sync lesson.py`) fails here."""
    notebook, source = notebook_cells(NOTEBOOK), source_cells(SOURCE)
    assert [kind for kind, _ in notebook] == [kind for kind, _ in source]
    for i, (cell, paired) in enumerate(zip(notebook, source, strict=True)):
        assert cell == paired, f"cell {i} differs: run `jupytext --sync lesson.py`"
    assert sum(kind == "code" for kind, _ in notebook) >= 15  # (the reader found the cells)


def test_the_pair_check_sees_a_drift(tmp_path):
    """The check above on a copy of the source with one line of code changed: the cells differ."""
    with open(SOURCE, encoding="utf-8") as f:
        text = f.read()
    drifted = tmp_path / "lesson.py"
    drifted.write_text(text.replace("PRETRAIN_STEPS = 300", "PRETRAIN_STEPS = 200", 1), encoding="utf-8")
    assert source_cells(str(drifted)) != notebook_cells(NOTEBOOK)


@needs_bpe
@pytest.mark.slow  # two small pretrainings and two SFTs in fp32: about 6 minutes on 2 idle cores (its first cell)
def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    """Executed as a user would (a Python kernel, the repository's root as its folder, its files in a scratch
    folder): any error fails it, the notebook's own asserts included (the SFT model's held-out accuracy >= 70%,
    the control wrong about France). Then its outputs: France -> Paris after SFT, no answer before."""
    import nbclient
    import nbformat

    import eval_qa
    import prepare_world

    monkeypatch.setenv("LESSON_OUT", str(tmp_path / "lesson"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()  # raises on a cell's error
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    # The France cell prints "  SFT: 'He capital is Paris.', ended with <|im_end|>: True" (the answer's repr)
    france = {who: (answer, ended) for who, _, answer, ended in
              re.findall(r"^ *(base|SFT): (['\"])(.*)\2, ended with <\|im_end\|>: (True|False)$", text, re.M)}
    assert eval_qa.is_correct(france["SFT"][0], "Paris", sorted(prepare_world.COUNTRIES.values())), france
    assert france["SFT"][1] == "True" and france["base"][1] == "False", france  # the base model goes on
