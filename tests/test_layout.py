"""The layout: every file imports only files below it (or beside it, for the few that share a layer), with no
import cycles, lazy imports inside functions included."""

import ast
import glob
import os

from conftest import ROOT

# From the bottom up. A file may import files of its own layer or below, never above. Scripts never import
# each other: what two scripts share lives in a layer below them.
LAYERS = [
    ("base", ["errors", "chat_template", "download", "common", "chunked_loss"]),  # import only errors
    ("model and data", ["model", "hf_checkpoint", "lora", "data", "configurator", "records", "record_files"]),
    ("the trainers' plumbing", ["checkpoint", "metrics"]),
    ("scripts", ["train_pretrain", "train_sft", "sample", "export_hf", "prepare_alpaca", "prepare_text", "plot"]),
    ("experiments and benchmarks", ["experiments/knowledge", "experiments/knowledge_report", "experiments/eval_qa",
                                    "experiments/prepare_world", "experiments/alpaca_chats", "experiments/sft_steps",
                                    "bench/bench", "bench/mutations", "bench/gpu_check"]),
    ("the lesson (a leaf: nothing imports it)", ["lesson"]),  # lesson.py, the notebook's paired source
]
LAYER = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
BY_MODULE = {name.split("/")[-1]: name for name in LAYER}  # the name an import statement uses


def project_imports(name: str) -> set[str]:
    """The project files a file imports, anywhere in it (top level, functions, `if TYPE_CHECKING`)."""
    with open(os.path.join(ROOT, name + ".py")) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {BY_MODULE[m] for m in found if m in BY_MODULE} - {name}


def test_every_file_has_a_layer():
    files = {os.path.relpath(p, ROOT)[:-3] for pattern in ("*.py", "experiments/*.py", "bench/*.py")
             for p in glob.glob(os.path.join(ROOT, pattern))}
    assert files == set(LAYER), f"files without a layer: {files - set(LAYER)}; gone: {set(LAYER) - files}"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, imports in graph.items():
        layer = LAYER[name]
        for imported in imports:
            same_layer_script = layer == LAYER["sample"] and LAYER[imported] == layer
            if LAYER[imported] > layer or same_layer_script:
                wrong.append(f"{name} ({LAYERS[layer][0]}) imports {imported} ({LAYERS[LAYER[imported]][0]})")
    return wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state = {}  # name -> "visiting" | "done"

    def visit(name, path):
        if state.get(name) == "visiting":
            return [*path[path.index(name):], name]
        if state.get(name) != "done":
            state[name] = "visiting"
            for imported in sorted(graph[name]):
                cycle = visit(imported, [*path, name])
                if cycle:
                    return cycle
            state[name] = "done"
        return None

    for name in graph:
        cycle = visit(name, [])
        if cycle:
            return cycle
    return None


def test_no_file_imports_one_above_it_and_scripts_do_not_import_scripts():
    wrong = layering_violations({name: project_imports(name) for name in LAYER})
    assert not wrong, "\n".join(wrong)


def test_the_base_imports_nothing_of_the_project_but_errors():
    for name in LAYERS[0][1]:
        assert project_imports(name) <= {"errors"}, name


def test_no_import_cycles():
    cycle = find_cycle({name: project_imports(name) for name in LAYER})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_have_teeth():
    graph = {name: project_imports(name) for name in LAYER}
    assert "checkpoint" in graph["train_sft"] and "errors" in graph["data"]  # the reader finds imports
    upward = {**graph, "data": graph["data"] | {"checkpoint"}}
    assert layering_violations(upward) == ["data (model and data) imports checkpoint (the trainers' plumbing)"]
    script_to_script = {**graph, "prepare_text": graph["prepare_text"] | {"prepare_alpaca"}}
    assert layering_violations(script_to_script) == ["prepare_text (scripts) imports prepare_alpaca (scripts)"]
    cyclic = {**graph, "lora": graph["lora"] | {"model"}, "model": graph["model"] | {"lora"}}
    assert find_cycle(cyclic) in (["lora", "model", "lora"], ["model", "lora", "model"])


LEARNERS_READ_FIRST = ["train_pretrain.py", "train_sft.py", "model.py", "chat_template.py"]


def test_the_files_learners_read_first_fit_100_columns():
    for name in LEARNERS_READ_FIRST:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            wide = [f"{name}:{i}: {len(line.rstrip())}" for i, line in enumerate(f, 1) if len(line.rstrip()) > 100]
        assert not wide, wide
