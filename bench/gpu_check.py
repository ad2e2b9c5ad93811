"""
The GPU check: what only a GPU can tell about the main job (`python train_sft.py configs/gpt2_alpaca.py`), in
one unattended run of at most 8 minutes on one CUDA GPU, with no network. From the repository root:

    python bench/gpu_check.py --alpaca alpaca_5000.json --bpe gpt2_bpe/ --out gpu_check_out

Copy beside the repository, before: an Alpaca JSON (the 5,000-record sample of ../shared/data/alpaca, or the
full 52K alpaca_data.json) and GPT-2's two BPE files, vocab.bpe and encoder.json, in one folder. Nothing else:
the model is a random GPT-2 124M (the weights' values do not change the speed); torch, triton, numpy, tiktoken,
tqdm and pytest must be installed (requirements-dev.txt).

In order, with a deadline for each, every output kept under --out:
  1. the GPU tests of tests/test_packing.py: FlexAttention against SDPA forward and backward at the main job's
     shape, and the compiled main-job step against eager (a skip or an error is a failure);
  2. bench/bench.py --only h: the main job compiled (a cold compile cache, then a warm one) and eager, with
     MFU both ways, the host's and the GPU's time a step (a 5-step profile), peak memory, and the whole
     recipe's time projected from them;
  3. if the time left allows: the whole recipe timed, on 52,002 records (the sample repeated to as many);
then --out/summary.md: every figure, and the targets met or missed (BENCHMARKS.md, "GPU").
--quick runs the same plumbing on a CPU with tiny shapes, to test this script; it measures nothing.
"""

import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bench  # noqa: E402  (bench/bench.py, beside this file)
import chat_template  # noqa: E402
import errors  # noqa: E402

BUDGET_S = 8 * 60
TARGETS = {"mfu": 0.40, "compiled_over_eager": 1.3, "recipe_s": 120}


def run(name: str, cmd: list[str], out: str, deadline: float, env: dict) -> tuple[int, str]:
    """cmd from the repository root (bench.stream: output echoed, killed at the deadline), its output kept in
    out/name.txt."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    code, lines, _ = bench.stream(cmd, env, deadline)
    text = "".join(line for _, line in lines)
    with open(os.path.join(out, f"{name}.txt"), "w") as f:
        f.write(text)
    return code, text


def test_counts(text: str) -> dict:
    """pytest's summary counts ('3 passed, 1 skipped in 2.0s'), every kind it names."""
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}


def main():
    errors.report_user_errors()
    p = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--alpaca", required=True, help="an Alpaca JSON file (records with instruction, input, output)")
    p.add_argument("--bpe", required=True, help="a folder holding GPT-2's vocab.bpe and encoder.json")
    p.add_argument("--out", required=True, help="where every output and summary.md go")
    p.add_argument("--steps", type=int, default=60, help="steps of each timed run of the main job")
    p.add_argument("--quick", action="store_true", help="tiny shapes on a CPU: tests this script, measures nothing")
    args = p.parse_args()
    for path, what in ((args.alpaca, "--alpaca"), (os.path.join(args.bpe, "vocab.bpe"), "--bpe"),
                       (os.path.join(args.bpe, "encoder.json"), "--bpe")):
        if not os.path.isfile(path):
            raise errors.UserError(f"{what}: {path} does not exist (see the header of bench/gpu_check.py)")
    start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    cache = os.path.join(out, "tiktoken")
    chat_template.fill_tiktoken_cache(args.bpe, cache)
    os.environ["TIKTOKEN_CACHE_DIR"] = cache  # (this process, for the full recipe's data, and its children)
    env = {"TIKTOKEN_CACHE_DIR": cache}
    py = sys.executable
    data_dir = os.path.join(out, "data", "alpaca")
    code, _ = run("prepare", [py, "prepare_alpaca.py", "--input", os.path.abspath(args.alpaca), "--out_dir",
                              data_dir], out, start + 120, env)
    if code != 0:
        raise errors.UserError(f"preparing {args.alpaca} failed: see {out}/prepare.txt")
    results = {}

    # 1. the GPU tests: every one must pass; a skip here means the GPU path went untested
    code, text = run("gpu_tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "",
                                   "tests/test_packing.py", "-k", "on_a_gpu"], out, start + 240, env)
    counts = test_counts(text)
    results["gpu_tests"] = {"exit": code, "counts": counts, "passed": code == 0 and counts.get("passed", 0) > 0
                            and not (counts.keys() & {"skipped", "failed", "error", "errors"})}

    # 2. the main job: compiled (cold, warm) and eager, the profile and the projection
    bench_cmd = [py, "bench/bench.py", "--only", "h", "--steps", str(args.steps), "--data_dir", data_dir,
                 "--json", os.path.join(out, "bench_h.json")] + (["--quick", "--device", "cpu"] if args.quick else [])
    code, text = run("bench_h", bench_cmd, out, start + BUDGET_S - 60, env)
    results["bench_h"] = {"exit": code}
    figures = None
    if code == 0:
        with open(os.path.join(out, "bench_h.json")) as f:
            figures = json.load(f)["h"]
        results["bench_h"]["markdown"] = text.split("## Benchmarks")[-1] if "## Benchmarks" in text else ""

    # 3. the whole recipe, if the time left allows it (as projected, with a minute to spare)
    left = start + BUDGET_S - time.time()
    if figures and "runs" in figures and figures["projected_recipe_s"] + 60 < left and not args.quick:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            results["full_recipe"] = bench.bench_full_recipe(os.path.abspath(args.alpaca), tmp)
    else:
        results["full_recipe"] = {"skipped": f"not run: {left:.0f} s left"}
    results["seconds"] = time.time() - start
    write_summary(out, results, figures)
    print(f"\nwrote {out}/summary.md ({results['seconds']:.0f} s)")
    sys.exit(0 if results["gpu_tests"]["passed"] and results["bench_h"]["exit"] == 0 else 1)


def write_summary(out: str, results: dict, figures: dict | None) -> None:
    """summary.md: the machine, the tests, the figures, and each target met or missed, with its figure."""
    lines = ["# GPU check", "", f"{results['seconds']:.0f} s in all.", "",
             f"- GPU tests: {'passed' if results['gpu_tests']['passed'] else 'FAILED'} "
             f"({results['gpu_tests']['counts']}; a skip is a failure here)"]
    if figures and "runs" in figures:
        runs = figures["runs"]
        warm, eager = runs.get("compiled, warm cache"), runs.get("eager")
        best = warm or eager
        verdicts = [("steady MFU, 6N (warm compile)", best["mfu_6n"], TARGETS["mfu"], ">="),
                    ("steady MFU, 6N + attention", best["mfu_6n_attention"], TARGETS["mfu"], ">="),
                    ("projected recipe, s (cold compile)", figures["projected_recipe_s"], TARGETS["recipe_s"], "<=")]
        if "compiled_over_eager" in figures:
            verdicts.append(("compiled / eager, tokens/s", figures["compiled_over_eager"],
                             TARGETS["compiled_over_eager"], ">="))
        for name, value, target, way in verdicts:
            met = value >= target if way == ">=" else value <= target
            lines.append(f"- {name}: {value:.3g} (target {way} {target}): {'met' if met else 'MISSED'}")
        lines.append(f"- peak GPU memory: {best['peak_gib']} GiB")
        lines += ["", figures.get("device", ""), "", results["bench_h"].get("markdown", "")]
    else:
        lines.append(f"- bench (h): exit {results['bench_h']['exit']} (see bench_h.txt)")
    full = results["full_recipe"]
    done = f"{full['wall_s']:.0f} s ({full['wall_s'] / 60:.1f} min), {full['steps']} steps" if "wall_s" in full else ""
    lines += ["", f"Full recipe, timed: {full.get('skipped') or done}"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
