"""A run's life, with real processes: a stop by SIGTERM or Ctrl-C saves the step reached and --init_from=resume
goes on from it bit for bit; a second Ctrl-C stops at once and leaves a loadable checkpoint; a new run never
silently replaces another run, nor appends to its metrics; a resumed run keeps the model it began from."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_RUN, needs_bpe, run_script

import checkpoint
import sample
from errors import UserError

pytestmark = [needs_bpe, pytest.mark.usefixtures("one_thread")]

FOREVER = ["--max_iters=100000", "--eval_interval=100000", "--checkpoint_interval=100000"]


def step_losses(out_dir) -> dict:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def logged_steps(out_dir) -> list[int]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r["iter"] for r in map(json.loads, f) if "loss" in r]


def start(out_dir, *args) -> subprocess.Popen:
    """train_sft.py into out_dir, its output in out_dir.log (a pipe nobody reads could fill and stall it).

    A shell without job control (a CI script's '&' job) starts its children with SIGINT ignored, and the
    trainer keeps ignoring it then, as it should. While this process catches SIGINT, a child starts with it at
    its default (exec resets a caught signal), so the test checks the trainer, not the launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(f"{out_dir}.log", "w")
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "train_sft.py", *TINY_RUN, f"--out_dir={out_dir}",
                                 *map(str, args)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def finish(proc: subprocess.Popen, out_dir) -> str:
    """Wait for the process; its output."""
    proc.wait(timeout=120)
    with open(f"{out_dir}.log") as f:
        return f.read()


def wait_for_step(proc: subprocess.Popen, out_dir, step: int) -> None:
    """Until the run has logged a training step >= step (it logs every step)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended: {open(f'{out_dir}.log').read()}"
        if os.path.exists(path) and any(s >= step for s in logged_steps(out_dir)):
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step {step} within 120 s")


@pytest.fixture(scope="module")
def stopped_runs(sft_data, tmp_path_factory):
    """{signal name: (out_dir, process result)} of two runs stopped mid-run, one by SIGTERM, one by SIGINT."""
    tmp = tmp_path_factory.mktemp("stopped")
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp / sig.name
        runs[sig.name] = (out, start(out, f"--data_dir={sft_data}", *FOREVER))
    for name, (out, proc) in runs.items():
        wait_for_step(proc, out, 3)
        proc.send_signal(signal.Signals[name])
    return {name: (out, finish(proc, out), proc.returncode) for name, (out, proc) in runs.items()}


@pytest.mark.parametrize("name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stop_saves_the_step_reached_and_resume_goes_on_bit_for_bit(stopped_runs, sft_data, tmp_path, name,
                                                                       code):
    out, output, returncode = stopped_runs[name]
    reached = max(logged_steps(out))
    assert returncode == code, output
    assert f"stopped by {name} at step {reached}: saved {out}/ckpt.pt" in output, output
    assert "error:" not in output and "Traceback" not in output, output
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"), for_resume=True)
    assert ckpt["iter_num"] == reached
    # resumed, it continues exactly as a run that was never stopped
    end = reached + 3
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--init_from=resume",
               f"--max_iters={end}", "--eval_interval=100000")
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp_path / 'straight'}", f"--max_iters={end}",
               "--eval_interval=100000")
    resumed, straight = step_losses(out), step_losses(tmp_path / "straight")
    assert logged_steps(out) == list(range(1, end + 1)), "each step logged once"
    assert resumed == straight, "resumed losses differ from the uninterrupted run's"


def test_a_second_ctrl_c_stops_at_once_leaving_a_loadable_checkpoint(sft_data, tmp_path):
    """The second Ctrl-C comes while the run finishes its step after the first (a wider model: slower steps).
    The checkpoint there is the last whole one (one every step here: a stop can come during a save)."""
    out = tmp_path / "twice"
    proc = start(out, f"--data_dir={sft_data}", "--n_embd=256", "--n_head=4", "--max_iters=100000",
                 "--eval_interval=100000", "--checkpoint_interval=1")
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    deadline = time.time() + 60
    while "stopping after this step" not in open(f"{out}.log").read() and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    output = finish(proc, out)
    assert proc.returncode == 130, output
    assert "stopped at once at step" in output and "Traceback" not in output, output
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"), for_resume=True)
    assert ckpt["iter_num"] >= 2
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], "a torn temporary file was left"


def test_a_new_run_refuses_an_out_dir_holding_a_run_and_overwrite_starts_it_afresh(stopped_runs, sft_data,
                                                                                    tmp_path):
    """After a stopped run: a new run there is refused in one line; --overwrite=True replaces it wholly (no
    best.pt of the old run outlives it, metrics.jsonl starts afresh)."""
    old = stopped_runs["SIGTERM"][0]
    out = tmp_path / "again"
    os.makedirs(out)
    for name in ("ckpt.pt", "metrics.jsonl"):
        with open(old / name, "rb") as f, open(out / name, "wb") as g:
            g.write(f.read())
    torch.save({"stale": True}, out / "best.pt")
    with pytest.raises(UserError) as e:
        run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--max_iters=2")
    assert f"out_dir={out} holds another run (ckpt.pt, best.pt)" in str(e.value)
    assert "--init_from=resume" in str(e.value) and "--overwrite=True" in str(e.value)
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--max_iters=2", "--overwrite=True",
               "--eval_interval=100000")
    assert logged_steps(out) == [1, 2]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 2
    assert torch.load(out / "best.pt", weights_only=True)["iter_num"] == 2, "the old run's best.pt outlived it"


def test_a_new_run_after_one_killed_before_any_checkpoint_starts_fresh_metrics(sft_data, tmp_path):
    """kill -9 leaves metrics.jsonl and no checkpoint: the next run there writes each step once."""
    out = tmp_path / "killed"
    proc = start(out, f"--data_dir={sft_data}", *FOREVER)
    wait_for_step(proc, out, 3)
    proc.kill()
    finish(proc, out)
    assert not os.path.exists(out / "ckpt.pt") and len(logged_steps(out)) >= 3
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--max_iters=4")
    assert logged_steps(out) == [1, 2, 3, 4]


def test_compare_finds_the_base_model_after_a_resumed_run(sft_data, tmp_path, capsys):
    """The checkpoint records the model the run began from (base_model), through resumes: sample.py --compare
    then puts that base beside the fine-tuned model."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={base}", "--max_iters=1")
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tuned}", f"--init_from={base}",
               "--max_iters=2")
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tuned}", "--init_from=resume", "--max_iters=3")
    ckpt = checkpoint.load_checkpoint(os.path.join(tuned, "ckpt.pt"))
    assert ckpt["iter_num"] == 3 and ckpt["base_model"] == str(base) and ckpt["config"]["init_from"] == "resume"
    capsys.readouterr()
    sample.main([f"--ckpt={tuned}", "--compare", "--prompt", "Name a colour.", "--max_new_tokens=4",
                 "--device=cpu", "--dtype=float32", "--threads=1"])
    out = capsys.readouterr().out
    assert f"--- base ({base}) ---" in out and f"--- fine-tuned ({tuned}) ---" in out, out


# ----------------------------------------------------------------------------------------------------------
# Trackers: W&B and TensorBoard log the numbers metrics.jsonl holds


def metrics_records(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_wandb_logs_what_metrics_jsonl_holds(sft_data, tmp_path, monkeypatch):
    """A stand-in for the wandb module records every call: the run logs each metrics.jsonl record, its "iter"
    as W&B's step, and finishes."""
    import types

    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or fake_run)
    fake_run = types.SimpleNamespace(log=lambda numbers, step: calls.append(("log", step, numbers)),
                                     finish=lambda: calls.append(("finish",)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--max_iters=3", "--wandb_log=True",
               "--wandb_project=p")
    assert calls[0][0] == "init" and calls[0][1]["project"] == "p" and calls[0][1]["name"] == "run"
    assert calls[0][1]["config"]["max_iters"] == 3 and calls[-1] == ("finish",)
    logged = [(step, numbers) for kind, *rest in calls if kind == "log" for step, numbers in [rest]]
    assert logged == [(r["iter"], {k: v for k, v in r.items() if k != "iter"}) for r in metrics_records(out)]


def test_wandb_offline_and_tensorboard_runs_write_their_files(sft_data, tmp_path, monkeypatch):
    """The real packages: W&B in offline mode writes its run folder; TensorBoard's event files, read back with
    its own reader, hold metrics.jsonl's numbers at metrics.jsonl's steps."""
    pytest.importorskip("wandb")  # (requirements-dev.txt installs both: CI never skips)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={out}", "--max_iters=3", "--wandb_log=True",
               "--tensorboard_log=True")
    assert [p for p in os.listdir(tmp_path / "wandb") if p.startswith("offline-run-")]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for name in ("loss", "val_loss", "tokens_per_s"):
        want = [(r["iter"], r[name]) for r in metrics_records(out) if name in r]
        got = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in got] == [s for s, _ in want], name
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), name  # (stored in fp32)


def test_a_tracker_without_its_package_is_one_line(sft_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"^wandb_log=True needs the wandb package: pip install wandb$"):
        run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=1",
                   "--wandb_log=True")


@pytest.mark.slow
def test_under_torchrun_a_sigterm_stops_every_process_at_one_step(sft_data, tmp_path):
    """A job scheduler's SIGTERM reaches every process of a torchrun job, each maybe at another step: they agree
    on one (common.StopSignals), rank 0 saves it, and the run resumes from it."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(f"{out}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "train_sft.py", *TINY_RUN, f"--data_dir={sft_data}", f"--out_dir={out}", *FOREVER],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_step(proc, out, 3)
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and both workers, as a scheduler signals a job
    proc.wait(timeout=120)
    output = open(f"{out}.log").read()
    reached = max(logged_steps(out))
    assert f"stopped by SIGTERM at step {reached}: saved {out}/ckpt.pt" in output, output[-3000:]
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"), for_resume=True)
    assert ckpt["iter_num"] == reached and len(ckpt["rng_state"]) == 2
