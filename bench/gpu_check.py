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
  3. if the time left allows: the whole recipe timed, on the sample repeated to the 52,002 records of Alpaca;
then --out/summary.md: every figure, and the targets met or missed (BENCHMARKS.md, "GPU").
--quick runs the same plumbing on a CPU with tiny shapes, to test this script; it measures nothing.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import chat_template  # noqa: E402
import errors  # noqa: E402

BUDGET_S = 8 * 60
TARGETS = {"mfu": 0.40, "compiled_over_eager": 1.3, "recipe_s": 120}


def run(name: str, cmd: list[str], out: str, deadline: float, env: dict) -> tuple[int, str]:
    """cmd from the repository root, its output streamed and kept in out/name.txt; killed at the deadline."""
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    lines = []
    with open(os.path.join(out, f"{name}.txt"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if "step/s" not in line:
                    print(line, end="", flush=True)
                if time.time() > deadline:
                    raise subprocess.TimeoutExpired(cmd, 0)
            code = proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = 124
            lines.append("\n(stopped: past its deadline)\n")
    return code, "".join(lines)


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
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    cache = os.path.join(out, "tiktoken")
    chat_template.fill_tiktoken_cache(args.bpe, cache)
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    data_dir = os.path.join(out, "data", "alpaca")
    code, _ = run("prepare", [py, "prepare_alpaca.py", "--input", os.path.abspath(args.alpaca), "--out_dir",
                              data_dir], out, start + 120, env)
    results = {"prepare": code}
    if code != 0:
        raise errors.UserError(f"preparing {args.alpaca} failed: see {out}/prepare.txt")

    # 1. the GPU tests: every one must pass; a skip here means the GPU path went untested
    code, text = run("gpu_tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "",
                                   "tests/test_packing.py", "-k", "on_a_gpu"], out, start + 180, env)
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    results["gpu_tests"] = {"exit": code, "summary": tail,
                            "passed": code == 0 and "skipped" not in tail and "2 passed" in tail}

    # 2. the main job: compiled (cold, warm) and eager, the profile and the projection
    bench = [py, "bench/bench.py", "--only", "h", "--steps", str(args.steps), "--data_dir", data_dir,
             "--json", os.path.join(out, "bench_h.json")] + (["--quick", "--device", "cpu"] if args.quick else [])
    code, text = run("bench_h", bench, out, start + BUDGET_S - 60, env)
    results["bench_h"] = {"exit": code}
    figures = None
    if code == 0:
        with open(os.path.join(out, "bench_h.json")) as f:
            figures = json.load(f)["h"]
        results["bench_h"]["markdown"] = text.split("## Benchmarks")[-1] if "## Benchmarks" in text else ""

    # 3. the whole recipe, if the time left allows it (as projected, with a minute to spare)
    left = start + BUDGET_S - time.time()
    if figures and "runs" in figures and figures["projected_recipe_s"] + 60 < left and not args.quick:
        results["full_recipe"] = full_recipe(args.alpaca, out, start + BUDGET_S, env)
    else:
        results["full_recipe"] = {"skipped": f"not run: {left:.0f} s left"}
    results["seconds"] = time.time() - start
    write_summary(out, results, figures)
    print(f"\nwrote {out}/summary.md ({results['seconds']:.0f} s)")
    sys.exit(0 if results["gpu_tests"]["passed"] and results["bench_h"]["exit"] == 0 else 1)


def full_recipe(alpaca: str, out: str, deadline: float, env: dict) -> dict:
    """The main job as a user runs it, timed, on 52,002 records: Alpaca's, or the sample repeated to as many
    (the same steps, shapes and evaluations as the real set; not its text). Preparing is timed apart."""
    with open(alpaca) as f:
        records = json.load(f)
    big = os.path.join(out, "data", "alpaca_52002.json")
    with open(big, "w") as f:
        json.dump((records * (52002 // len(records) + 1))[:52002], f)
    data_dir = os.path.join(out, "data", "alpaca_52002")
    t0 = time.time()
    run("prepare_52002", [sys.executable, "prepare_alpaca.py", "--input", big, "--out_dir", data_dir], out,
        deadline, env)
    prepare_s, t0 = time.time() - t0, time.time()
    code, text = run("full_recipe", [sys.executable, "train_sft.py", "configs/gpt2_alpaca.py",
                                     "--init_from=scratch", f"--data_dir={data_dir}",
                                     f"--out_dir={os.path.join(out, 'full_run')}"], out, deadline, env)
    wall_s = time.time() - t0
    done = [line for line in text.splitlines() if line.startswith(("done:", "peak GPU", "torch.compile"))]
    return {"exit": code, "prepare_s": prepare_s, "wall_s": wall_s,
            "text": f"exit {code}, {wall_s:.0f} s ({wall_s / 60:.1f} min; preparing the data first: "
                    f"{prepare_s:.0f} s); " + "; ".join(done)}


def write_summary(out: str, results: dict, figures: dict | None) -> None:
    """summary.md: the machine, the tests, the figures, and each target met or missed, with its figure."""
    lines = ["# GPU check", "", f"{results['seconds']:.0f} s in all.", "",
             f"- GPU tests: {'passed' if results['gpu_tests']['passed'] else 'FAILED'} "
             f"({results['gpu_tests']['summary']})"]
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
    lines += ["", f"Full recipe: {full.get('skipped') or full.get('text', '')}"]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
