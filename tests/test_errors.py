"""Every user mistake is one line on stderr, exit code 2, no traceback, and leaves nothing behind
(no out_dir, no data_dir, nothing in the model cache); and the faults (Ctrl-C, a kill during a checkpoint
write, a full disk) never tear a checkpoint.

Most rows run in-process: the training scripts through runpy (their real top-level code, without the ~3 s
of a fresh Python + torch), sample.main, or the function that owns the check. A few subprocesses prove what
only a real process shows: the exit code and the absence of a traceback end to end, and SIGINT.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from conftest import ROOT, as_script, needs_bpe, run_script

import chat_template
import checkpoint
import common
import data
import errors
import sample
from configurator import load_config
from model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPTS = ("train_pretrain.py", "train_sft.py")


# ----------------------------------------------------------------------------------------------------------
# helpers


def tree(root) -> set[str]:
    """Every file and folder under root, relative: compared before and after, 'nothing new appeared'."""
    found = set()
    for here, dirs, files in os.walk(root):
        found.update(os.path.relpath(os.path.join(here, name), root) for name in dirs + files)
    return found


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory with out/shakespeare (a real run's folder) and an empty model cache; the test
    checks that it looks the same afterwards."""
    work = tmp_path / "work"
    (work / "out" / "shakespeare").mkdir(parents=True)
    (work / "cache").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("NANOSFT_CACHE", str(work / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nobody listens: a hub request fails at once
    before = tree(work)
    yield work
    assert tree(work) == before, "a failed command left files or folders behind"


def user_error(capsys, fn, *args, **kwargs) -> str:
    """Call fn as a script would (conftest.as_script): it must stop with a UserError, reported as exit code 2
    and exactly one 'error: ...' line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as e:
        as_script(fn, *args, **kwargs)
    assert e.value.code == 2
    assert isinstance(e.value.__context__, errors.UserError), "only a UserError is reported as a user's mistake"
    out, err = capsys.readouterr()
    user_error.out = out  # what the command printed before it stopped
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == f"error: {e.value.__context__}"
    return lines[0]


def metric_iters(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["iter"] for line in f if "loss" in json.loads(line)]


def step_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


# ----------------------------------------------------------------------------------------------------------
# 1. the rows of the Troubleshooting table (docs/GUIDE.md), in-process


@pytest.mark.parametrize("script", SCRIPTS)
def test_init_from_a_folder_without_config_json(script, place, capsys):
    (place / "out" / "shakespeare" / "notes.txt").write_text("")  # a folder, but not a model
    line = user_error(capsys, run_script, script, "--init_from=out/shakespeare", "--out_dir=run")
    assert "out/shakespeare is a folder without config.json" in line and "ckpt.pt" in line
    (place / "out" / "shakespeare" / "notes.txt").unlink()


@pytest.mark.parametrize("script", SCRIPTS)
def test_init_from_a_typo_of_a_local_folder_is_not_a_hub_repo(script, place, capsys):
    line = user_error(capsys, run_script, script, "--init_from=out/shakespear", "--out_dir=run")
    assert "out/shakespear does not exist" in line
    assert "hub" not in line  # it never went there; the cache stays empty (checked by `place`)


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_without_a_checkpoint(script, place, capsys):
    line = user_error(capsys, run_script, script, "--init_from=resume", "--out_dir=run")
    assert "run/ckpt.pt does not exist: there is nothing to resume" in line


@pytest.mark.parametrize("script", SCRIPTS)
def test_init_from_an_unknown_model_name(script, place, capsys):
    line = user_error(capsys, run_script, script, "--init_from=gpt3", "--out_dir=run")
    assert "init_from=gpt3: 'gpt3' is neither a local folder nor a hub repo" in line and "gpt2-medium" in line


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_data_dir_typo_is_an_error_not_a_download(script, place, capsys):
    line = user_error(capsys, run_script, script, "--data_dir=data/alpaka", "--out_dir=run", "--max_iters=1")
    assert "data_dir=data/alpaka holds no prepared data (meta.json)" in line


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_missing_config_file_says_it_does_not_exist(script, place, capsys):
    line = user_error(capsys, run_script, script, "configs/nope.py", tiny=False)
    assert line == "error: config file configs/nope.py does not exist (configs/ holds the shipped ones)"


def test_a_wrong_type_says_an_int(capsys):
    line = user_error(capsys, load_config, {"batch_size": 8, "dropout": 0.0}, ["--batch_size=abc"])
    assert "batch_size must be an int (default 8), got 'abc' (str)" in line
    assert "must be a float" in user_error(capsys, load_config, {"dropout": 0.0}, ["--dropout=x"])


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args, expected", [
    (["--lora_rank=-1"], "lora_rank=-1: give a positive rank such as 8 (or 0 for no LoRA: train every weight)"),
    (["--lora_rank=8", "--lora_targets=q_proj,v_proj"], "lora_targets: unknown layer 'q_proj'; valid names: "
     "attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, or c_attn, c_proj (both projections), c_fc"),
    # said before the model loads: no hub request for GPT-2 XL's 6 GB (none could succeed here, see `place`)
    (["--init_from=gpt2-xl", "--lora_rank=8", "--lora_alpha=0"],
     "lora_alpha=0.0: give a positive scale such as 16 (the update is alpha / rank * B A)"),
])
def test_bad_lora_settings(script, args, expected, place, capsys):
    assert user_error(capsys, run_script, script, *args, "--out_dir=run") == f"error: {expected}"


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_resuming_a_lora_run_without_its_settings_and_the_reverse(sft_data, tmp_path, capsys):
    lora_run, full_run = tmp_path / "lora_run", tmp_path / "full_run"
    common_args = [f"--data_dir={sft_data}", "--max_iters=1"]
    run_script("train_sft.py", *common_args, f"--out_dir={lora_run}", "--lora_rank=4")
    run_script("train_sft.py", *common_args, f"--out_dir={full_run}")
    capsys.readouterr()
    before = tree(tmp_path)
    resume = [f"--data_dir={sft_data}", "--max_iters=2", "--init_from=resume"]  # one step left to train
    line = user_error(capsys, run_script, "train_sft.py", *resume, f"--out_dir={lora_run}")
    assert line == ("error: resume: the run was trained with --lora_rank=4 --lora_alpha=16.0 "
                    "--lora_targets=c_attn,c_proj,c_fc --lora_dropout=0.0; resume it with the same settings")
    line = user_error(capsys, run_script, "train_sft.py", *resume, f"--out_dir={full_run}", "--lora_rank=4")
    assert line == ("error: resume: the run trained every weight (lora_rank=0), not LoRA adapters; resume it "
                    "without --lora_rank=4")
    assert tree(tmp_path) == before
    # the same layers spelled another way are the same settings
    run_script("train_sft.py", *resume, f"--out_dir={lora_run}", "--lora_rank=4",
               "--lora_targets=attn.c_attn,mlp.c_fc,c_proj")


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
@pytest.mark.parametrize("script", SCRIPTS)
def test_too_little_data_stops_before_any_evaluation(script, sft_data, tmp_path, capsys):
    if script == "train_sft.py":  # 24 examples of 24 tokens pack into 12 rows of 64; a step of 8 x 4 needs 32
        args, expected = [f"--data_dir={sft_data}", "--gradient_accumulation_steps=8"], "train packs into 12 "\
            "rows of 64 tokens; a step needs 32 (batch_size x gradient_accumulation_steps x processes)"
    else:  # a text of fewer tokens than one window
        import prepare_text

        (tmp_path / "t.txt").write_text("To be or not to be. " * 3)
        prepare_text.prepare(input_path=str(tmp_path / "t.txt"), out_dir=str(tmp_path / "text"))
        args, expected = [f"--data_dir={tmp_path / 'text'}"], "tokens; one window needs block_size + 1 = 65"
    line = user_error(capsys, run_script, script, *args, f"--out_dir={tmp_path / 'run'}")
    assert expected in line
    assert "step 0" not in user_error.out  # said before the step-0 evaluation, not after it
    assert not (tmp_path / "run").exists()


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_a_split_with_no_example_that_fits_is_one_line(sft_data, tmp_path, capsys):
    """Every example of the fixture has 23 to 27 tokens: at block_size 16 none fits, and packing them would give
    no rows at all (an evaluation of no batches, a division by zero)."""
    line = user_error(capsys, run_script, "train_sft.py", f"--data_dir={sft_data}", "--block_size=16",
                      f"--out_dir={tmp_path / 'run'}")
    assert line == (f"error: data_dir={sft_data}: none of the 24 train examples fits block_size 16; prepare the "
                    f"data with shorter examples (--max_len), or use a model with a longer context")
    assert not (tmp_path / "run").exists()


@needs_bpe
@pytest.mark.parametrize("recorded", ["0123456789ab", None], ids=["another_fingerprint", "no_fingerprint"])
def test_data_prepared_by_another_version_of_the_template_is_refused(recorded, sft_data, tmp_path, capsys):
    """llama2's rendering once changed (the answer's leading space): data prepared before such a change must
    be prepared again, not trained on with prompts that sample.py now renders differently; so must a folder an
    older nanoSFT prepared before fingerprints were recorded. The command the error line gives must make the
    very data a fresh preparation makes."""
    stale = tmp_path / "stale"
    shutil.copytree(sft_data, stale)
    meta = json.loads((stale / "meta.json").read_text())
    assert meta["template_fingerprint"] == chat_template.fingerprint("chatml")  # prepare_alpaca.py records it
    if recorded is None:
        del meta["template_fingerprint"]
    else:
        meta["template_fingerprint"] = recorded
    (stale / "meta.json").write_text(json.dumps(meta))
    line = user_error(capsys, run_script, "train_sft.py", f"--data_dir={stale}", f"--out_dir={tmp_path / 'run'}")
    why = ("was prepared by an older nanoSFT (its meta.json has no template_fingerprint)" if recorded is None else
           f"was prepared by another version of chat_template.py (its chatml fingerprint is {recorded}, now "
           f"{chat_template.fingerprint('chatml')})")
    command = (f"python prepare_alpaca.py --input {meta['source']} --template chatml --val_size 4 --max_len 1024 "
               f"--seed 1337 --out_dir {stale}")
    assert line == f"error: data_dir={stale} {why}: prepare it again: `{command}`"
    assert not (tmp_path / "run").exists()
    subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT, check=True, capture_output=True)
    for name in os.listdir(sft_data):  # the same ids, masks, offsets and meta.json as the fixture's
        assert (stale / name).read_bytes() == open(os.path.join(sft_data, name), "rb").read(), name


def test_sample_ckpt_is_local_only(place, capsys):
    for ckpt, what in (("out/nope", "it does not exist"), ("gpt2", "it does not exist"),
                       ("out/shakespeare", "the folder holds neither ckpt.pt nor config.json"),
                       ("out/nope.pt", "the file does not exist")):
        line = user_error(capsys, sample.main, [f"--ckpt={ckpt}", "--prompt=Hi"])
        assert f"--ckpt={ckpt}: no such checkpoint ({what})" in line, line
        assert "a folder with ckpt.pt" in line and "config.json" in line  # what the folder would need


@pytest.mark.parametrize("args, expected", [
    (["--top_p=0"], "--top_p=0.0: must be in (0, 1]"),
    (["--top_k=0"], "--top_k=0: must be >= 1"),
    (["--temperature=-1"], "--temperature=-1.0: must be >= 0"),
    (["--prompt", ""], "--prompt is empty"),
])
def test_sample_settings(args, expected, place, capsys):
    line = user_error(capsys, sample.main, ["--ckpt=out/nope", "--prompt=Hi", *args])
    assert expected in line


@needs_bpe
def test_sample_says_when_the_context_window_fills():
    """All-zero weights and greedy decoding always pick token 0, never an end token: generation runs into
    the 16-token window after 10 tokens, and must say so rather than blame --max_new_tokens=256."""
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=50304)).eval()
    for p in model.parameters():
        p.data.zero_()
    args = types.SimpleNamespace(max_new_tokens=256, temperature=0.0, top_k=None, top_p=1.0)
    new, ending = sample.respond(model, [1, 2, 3, 4, 5, 6], "chatml", args, "cpu", stream=False)
    assert (len(new), ending) == (10, "no end token: the context window (16 tokens) is full")
    args.max_new_tokens = 3
    new, ending = sample.respond(model, [1, 2, 3], "chatml", args, "cpu", stream=False)
    assert (len(new), ending) == (3, "no end token within --max_new_tokens=3")


@needs_bpe
def test_offline_hub_download_names_both_files(place, capsys):
    """No network (HF_ENDPOINT on a closed port): the message names every file to place, at once."""
    runtime = common.Runtime(ddp=False, rank=0, local_rank=0, world_size=1, device="cpu", device_type="cpu",
                             dtype="float32", threads=1)
    line = user_error(capsys, checkpoint.init_model, "gpt2", "run", GPTConfig(), runtime)
    assert "place both files" in line and "config.json and model.safetensors" in line
    assert os.path.join(str(place / "cache"), "openai-community", "gpt2") in line


# ----------------------------------------------------------------------------------------------------------
# 1b. a run refuses what it cannot continue: another trainer, context window or data folder on resume, and a
# prepared folder with a file missing or cut off


@pytest.fixture(scope="module")
def finished_sft_run(sft_data, tmp_path_factory):
    """One step of train_sft.py, its out_dir and data, and a copy of the data in another folder."""
    tmp = tmp_path_factory.mktemp("finished")
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp / 'run'}", "--max_iters=1")
    shutil.copytree(sft_data, tmp / "other_data")
    return tmp / "run", sft_data, tmp / "other_data"


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_resume_refuses_another_trainer_context_window_or_data(finished_sft_run, capsys):
    run, data_dir, other = finished_sft_run
    before = tree(run.parent)
    args = [f"--out_dir={run}", "--init_from=resume", "--max_iters=2"]
    line = user_error(capsys, run_script, "train_pretrain.py", *args)
    assert line == (f"error: resume: {run}/ckpt.pt was written by train_sft.py, not train_pretrain.py: continue "
                    f"it with `python train_sft.py ... --init_from=resume`, or start a new run from it with "
                    f"--init_from={run} and another --out_dir")
    line = user_error(capsys, run_script, "train_sft.py", *args[:2], "--max_iters=1", f"--data_dir={data_dir}")
    assert line == (f"error: resume: {run}/ckpt.pt has reached step 1 and max_iters=1: nothing is left to train; "
                    f"raise --max_iters to train on (--eval_only=True evaluates it)")
    line = user_error(capsys, run_script, "train_sft.py", *args, f"--data_dir={data_dir}", "--block_size=32")
    assert line == (f"error: block_size=32, but the model from {run}/ckpt.pt, step 1 (began from scratch) has a "
                    f"context window of 64: a loaded model keeps its own (leave block_size at 0)")
    line = user_error(capsys, run_script, "train_sft.py", *args, f"--data_dir={other}")
    assert line == (f"error: resume: the run trained on data_dir={data_dir}, not {other}; resume it with "
                    f"--data_dir={data_dir}, or start a new run from its checkpoint (--init_from=<its out_dir>) "
                    f"with another out_dir")
    assert tree(run.parent) == before, "nothing written, the checkpoint untouched"


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_resume_names_the_other_data_folder_before_anything_about_that_folder(finished_sft_run, tmp_path,
                                                                              capsys):
    """Resuming with a data folder too small to make a step: the line says it is not the run's folder (the
    fix), not that the folder packs into too few rows."""
    import prepare_alpaca

    run, data_dir, _ = finished_sft_run
    records = [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(5)]
    (tmp_path / "five.json").write_text(json.dumps(records))
    as_script(prepare_alpaca.prepare, inputs=[str(tmp_path / "five.json")], out_dir=str(tmp_path / "five"),
              val_size=1)
    capsys.readouterr()
    line = user_error(capsys, run_script, "train_sft.py", f"--out_dir={run}", "--init_from=resume",
                      f"--data_dir={tmp_path / 'five'}")
    assert line.startswith(f"error: resume: the run trained on data_dir={data_dir}, not {tmp_path / 'five'}")


@pytest.mark.parametrize("args, expected", [
    (["--attention=flash"], "attention='flash': choose one of auto, sdpa, flex"),
    (["--loss_path=fast"], "loss_path='fast': choose one of auto, chunked, fused"),
    (["--attention=flex", "--dropout=0.1"], "attention=flex: FlexAttention has no dropout (dropout=0.1); use "
                                            "--attention=sdpa, or --dropout=0.0"),
    (["--attention=flex"], "has no FlexAttention backward on cpu; train with --attention=sdpa (or auto), or only "
                           "evaluate (--eval_only=True)"),
    (["--threads=-1"], "threads=-1: give a count of threads, or 0 for the cores idle at the start"),
])
def test_a_kernel_or_thread_setting_that_cannot_run_is_one_line(args, expected, place, capsys):
    line = user_error(capsys, run_script, "train_sft.py", "--out_dir=run", *args)
    assert expected in line, line


def test_an_unknown_option_names_the_closest_one(capsys):
    """argparse's own errors (errors.ArgumentParser) are one line too, with the option meant (--outdir)."""
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt=x", "--promt", "Hi"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: unrecognized arguments: --promt Hi; did you mean --prompt?"), err


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_a_run_says_what_it_will_do_and_where_it_resumes(sft_data, tmp_path, capsys):
    """The summary line, worked out by hand: the 24 examples have 22 to 26 positions (tokens - 1), so two fit
    a row of 64 and three never do: 12 rows, their fill the examples' positions over 12 x 64; a step is
    batch_size 4 rows, so an epoch is 3 steps."""
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=3")
    out = capsys.readouterr().out
    positions = np.diff(np.fromfile(os.path.join(sft_data, "train_offsets.bin"), dtype=np.int64)) - 1
    assert len(positions) == 24 and 2 * positions.max() <= 64 < 3 * positions.min()
    assert f"data: {sft_data}, 24 train examples packed in 12 rows ({positions.sum() / (12 * 64):.1%} full; " \
           f"attention sdpa), 3 steps an epoch: max_iters 3 is 1.0 epochs\n" in out, out
    assert "model: scratch (random weights); 1.64M parameters, block_size 64; loss chunked; training" in out, out
    assert f"out_dir: {tmp_path / 'run'}/, ckpt.pt every 250 steps" in out, out
    assert "runtime: device cpu, dtype float32, 1 CPU thread(s), 1 process(es)\n" in out, out
    run_script("train_sft.py", f"--data_dir={sft_data}", f"--out_dir={tmp_path / 'run'}", "--max_iters=6",
               "--init_from=resume")
    out = capsys.readouterr().out
    assert "max_iters 6 is 2.0 epochs\n" in out and "; resuming from step 3\n" in out, out
    assert f"model: {tmp_path / 'run'}/ckpt.pt, step 3 (began from scratch);" in out, out

    import prepare_text

    (tmp_path / "t.txt").write_text("To be or not to be, that is the question. " * 80)
    meta = prepare_text.prepare(input_path=str(tmp_path / "t.txt"), out_dir=str(tmp_path / "text"))
    capsys.readouterr()
    run_script("train_pretrain.py", f"--data_dir={tmp_path / 'text'}", f"--out_dir={tmp_path / 'pre'}",
               "--max_iters=2")
    n = meta["n_train_tokens"]
    assert f"data: {tmp_path / 'text'}, {n:,} train tokens in windows (causal attention); 256 tokens per step: " \
           f"max_iters 2 is {2 * 256 / n:.1f} epochs\n" in capsys.readouterr().out


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_prepared_folder_with_a_file_missing_or_cut_off_is_one_line(damage, sft_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(sft_data, broken)
    size = (broken / "val_mask.bin").stat().st_size
    if damage == "missing":
        (broken / "val_mask.bin").unlink()
    else:
        (broken / "val_mask.bin").write_bytes(b"\1" * (size - 3))
    before = tree(tmp_path)
    line = user_error(capsys, run_script, "train_sft.py", f"--data_dir={broken}", f"--out_dir={tmp_path / 'run'}")
    what = "is missing" if damage == "missing" else f"has {size - 3:,} bytes, not the {size:,} meta.json promises"
    command = data.prepare_command(json.loads((broken / "meta.json").read_text()), str(broken))
    assert line == f"error: data_dir={broken}: val_mask.bin {what}; prepare the folder again: `{command}`"
    assert command.startswith("python prepare_alpaca.py --input ") and command.endswith(f"--out_dir {broken}")
    assert tree(tmp_path) == before


@needs_bpe  # prepares a text with the GPT-2 tokenizer
def test_a_pretraining_folder_with_a_cut_off_file_is_one_line(tmp_path, capsys):
    import prepare_text

    (tmp_path / "t.txt").write_text("To be or not to be, that is the question. " * 40)
    prepare_text.prepare(input_path=str(tmp_path / "t.txt"), out_dir=str(tmp_path / "text"))
    train = tmp_path / "text" / "train.bin"
    train.write_bytes(train.read_bytes()[:-2])
    line = user_error(capsys, run_script, "train_pretrain.py", f"--data_dir={tmp_path / 'text'}",
                      f"--out_dir={tmp_path / 'run'}")
    assert f"data_dir={tmp_path / 'text'}: train.bin has " in line and "prepare the folder again: `python " \
        "prepare_text.py --input " in line
    assert not (tmp_path / "run").exists()


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_trainers_take_key_value_and_key_space_value_alike(sft_data, tmp_path):
    run_script("train_sft.py", "--data_dir", sft_data, "--out_dir", str(tmp_path / "run"), "--max_iters", "1")
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert state["iter_num"] == 1 and state["config"]["data_dir"] == sft_data
    config = load_config({"max_iters": 1, "dropout": 0.0, "out_dir": ""}, ["--max_iters", "3", "--dropout=0.1",
                                                                           "--out_dir", "out/x"])
    assert config == {"max_iters": 3, "dropout": 0.1, "out_dir": "out/x"}


# ----------------------------------------------------------------------------------------------------------
# 2. --prompts_from: the held-out questions of a prepared split


@needs_bpe
@pytest.mark.parametrize("template, system_prompt", [("chatml", None), ("chatml", "Be brief."),
                                                     ("alpaca", None), ("llama2", "Be brief.")])
def test_prompts_from_a_prepared_split(template, system_prompt, tmp_path):
    import prepare_alpaca

    records = [{"instruction": f"Question {i}: why?", "input": "some\ninput" if i % 2 else "", "output": "Yes."}
               for i in range(10)]
    (tmp_path / "r.json").write_text(json.dumps(records))
    prepare_alpaca.prepare(inputs=[str(tmp_path / "r.json")], out_dir=str(tmp_path / "d"), val_size=4,
                           template=template, system_prompt=system_prompt)
    users = {r["instruction"] + ("\n\n" + r["input"] if r["input"] else "") for r in records}
    args = types.SimpleNamespace(prompt=None, prompts_from=str(tmp_path / "d" / "val"), num_prompts=20)
    val = sample.read_prompts(args)
    assert len(val) == 4 and set(val) <= users
    train = data.read_prompts(str(tmp_path / "d"), split="train")
    assert len(train) == 6 and set(train) | set(val) == users, "every user turn, exactly, and no other"
    args.num_prompts = 2
    assert sample.read_prompts(args) == val[:2]


def test_prompts_from_errors(tmp_path, capsys):
    args = types.SimpleNamespace(prompt=None, prompts_from=str(tmp_path / "nope" / "val"), num_prompts=20)
    assert "no prepared val split (meta.json is missing)" in user_error(capsys, sample.read_prompts, args)
    args.prompts_from = str(tmp_path)
    assert "name a prepared folder and a split" in user_error(capsys, sample.read_prompts, args)


# ----------------------------------------------------------------------------------------------------------
# 3. real processes, started at once (each costs seconds of Python + torch start-up): a mistake end to end,
# and a training run stopped by SIGINT


@pytest.fixture(scope="module")
def processes(sft_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("processes")
    mistakes = tmp / "mistakes"  # a fresh clone's working directory: no out/, no data/
    mistakes.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NANOSFT_CACHE": str(mistakes / "cache"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("RANK", None)

    def start(args, cwd):
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # Every kind of script, each with one mistake (the README's promise): a trainer, the two prepare scripts,
    # the export, the plot, sample.py and chat_template.py (with a bad flag: argparse's own errors are one
    # line too), the knowledge experiment
    (mistakes / "bad.json").write_text('[{"instruction": "a", "output": "b"},]')
    (mistakes / "empty.txt").write_text("")
    commands = [["train_sft.py", os.path.join(ROOT, "configs", "tiny_alpaca.py"), "--threads=1"],
                ["prepare_alpaca.py", "--input", "bad.json"], ["prepare_text.py", "--input=empty.txt"],
                ["export_hf.py", "--ckpt=missing", "--out=out/hf"], ["plot.py", "missing"],
                ["sample.py", "--ckpt=out", "--temperature=hot"], ["chat_template.py", "nope"],
                ["experiments/knowledge.py", "--lora_ranks=1,x", "--out_dir=out/knowledge"]]
    wrong = [start([os.path.join(ROOT, c[0]), *c[1:]], mistakes) for c in commands]
    results = [(p.communicate(timeout=120)[1], p.returncode)[::-1] for p in wrong]
    return {"mistakes": (mistakes, results)}


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_real_processes_exit_2_with_one_line(processes):
    mistakes, results = processes["mistakes"]
    expected = ["error: init_from=out/shakespeare: out/shakespeare does not exist: run `python train_pretrain.py "
                "configs/tiny_shakespeare.py` first\n", "bad.json is not valid JSON", "empty.txt is empty",
                "--ckpt=missing: no checkpoint there", "missing: no such folder",
                "argument --temperature: invalid float value: 'hot' (see sample.py --help)",
                "argument template: invalid choice: 'nope'", "--lora_ranks=1,x: give whole numbers"]
    for (code, err), what in zip(results, expected, strict=True):
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1 and what in err, err
    assert tree(mistakes) == {"bad.json", "empty.txt"}, "no out_dir, no data folder, no cache folder: no request"


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(sft_data, tmp_path, capsys, monkeypatch):
    """SIGKILL between the temp write and the rename leaves a torn ckpt.pt.tmp beside the real ckpt.pt
    (save_atomic's cleanup never runs): simulated by writing exactly that. Resume must load ckpt.pt and go
    on; killed during the very first save (no ckpt.pt yet), resume says there is nothing to resume."""
    run = tmp_path / "run"
    args = [f"--data_dir={sft_data}", f"--out_dir={run}", "--eval_interval=2"]
    run_script("train_sft.py", *args, "--max_iters=2")
    good = (run / "ckpt.pt").read_bytes()
    (run / "ckpt.pt.tmp").write_bytes(good[: len(good) // 2])  # torn: the kill came mid-write
    assert torch.load(run / "ckpt.pt", weights_only=True)["iter_num"] == 2, "the previous checkpoint loads"
    seen = []  # the folder as each save finds it: the torn file must be gone before the first one
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, model, **fields: (seen.append(os.listdir(run)),
                                                                           real_save(path, model, **fields)))
    run_script("train_sft.py", *args, "--max_iters=4", "--init_from=resume")
    assert torch.load(run / "ckpt.pt", weights_only=True)["iter_num"] == 4
    assert seen and "ckpt.pt.tmp" not in seen[0], "the stale temp file is cleared at the start"
    assert not (run / "ckpt.pt.tmp").exists()
    assert metric_iters(run) == [1, 2, 3, 4]

    first = tmp_path / "first"
    first.mkdir()
    (first / "ckpt.pt.tmp").write_bytes(good[:1000])
    capsys.readouterr()
    line = user_error(capsys, run_script, "train_sft.py", f"--data_dir={sft_data}", f"--out_dir={first}",
                      "--init_from=resume")
    assert "ckpt.pt does not exist: there is nothing to resume" in line


@needs_bpe  # the fixture prepares SFT data with the GPT-2 tokenizer
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(sft_data, tmp_path, capsys, monkeypatch):
    """The second ckpt.pt write fails with ENOSPC after half its bytes: the run stops with one line saying the
    previous checkpoint is intact, that checkpoint loads, no temp file stays, and resuming from it works."""
    real_save = torch.save
    writes = []

    def save(obj, f, *args, **kwargs):
        if getattr(f, "name", "").endswith("ckpt.pt.tmp"):
            writes.append(f.name)
            if len(writes) == 2:
                f.write(b"\0" * 1000)  # a partial write, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    args = [f"--data_dir={sft_data}", f"--out_dir={run}", "--eval_interval=2", "--max_iters=6"]
    line = user_error(capsys, run_script, "train_sft.py", *args)
    assert line == f"error: could not write {run / 'ckpt.pt'} (No space left on device); the previous " \
                   f"checkpoint is intact"
    assert torch.load(run / "ckpt.pt", weights_only=True)["iter_num"] == 2
    assert sorted(os.listdir(run)) == ["best.pt", "ckpt.pt", "metrics.jsonl"]
    monkeypatch.setattr(torch, "save", real_save)  # space freed: resume
    run_script("train_sft.py", *args, "--init_from=resume")
    assert torch.load(run / "ckpt.pt", weights_only=True)["iter_num"] == 6
    assert metric_iters(run) == list(range(1, 7))
    assert np.isfinite(list(step_losses(run).values())).all()
