"""The suite checks what it claims: no loop of assertions in the tests runs zero times (a loop over an empty list
asserts nothing, and passes). The slow suite runs the fast suite under coverage and reads which lines ran."""

import ast
import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def zero_iteration_loops(source: str, ran: set[int]) -> list[int]:
    """The lines of the for/while loops in source whose body holds an assert, whose header ran (ran: the line
    numbers executed) and whose body never did."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.For | ast.While) and node.lineno in ran:
            asserts = any(isinstance(n, ast.Assert) for stmt in node.body for n in ast.walk(stmt))
            if asserts and node.body[0].lineno not in ran:
                found.append(node.lineno)
    return found


def test_the_scan_finds_a_loop_that_never_ran():
    source = ("def test_x():\n"                  # 1
              "    for item in []:\n"             # 2  ran, body never
              "        assert item\n"             # 3
              "    for item in [1]:\n"            # 4  ran, body ran
              "        assert item\n"             # 5
              "    for item in []:\n"             # 6  no assert: not counted
              "        print(item)\n")            # 7
    assert zero_iteration_loops(source, ran={1, 2, 4, 5, 6}) == [2]
    assert zero_iteration_loops(source, ran={1}) == [], "a loop that never started (a skipped test) is not counted"


@pytest.mark.slow
def test_no_asserting_loop_of_the_fast_suite_runs_zero_times(tmp_path):
    data_file = tmp_path / "coverage"
    proc = subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data_file}",
                           f"--include={ROOT}/tests/*", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    import coverage

    measured = coverage.Coverage(data_file=str(data_file))
    measured.load()
    data = measured.get_data()
    wrong = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "*.py"))):
        with open(path) as f:
            source = f.read()
        ran = set(data.lines(path) or ())
        wrong += [f"{os.path.relpath(path, ROOT)}:{line}" for line in zero_iteration_loops(source, ran)]
    assert not wrong, f"loops of assertions that ran zero times: {wrong}"
