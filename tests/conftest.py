"""Shared test fixtures and helpers: the real GPT-2 BPE files and data from ../shared, when that folder is
present, and the tiny model and training run that many tests start in-process."""

import json
import os
import runpy
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "experiments"))  # the knowledge experiment's modules

import chat_template  # noqa: E402

SHARED_BPE = all(os.path.exists(os.path.join(SHARED, "gpt2", f)) for f in chat_template.BPE_CACHE_NAMES)
CACHED_BPE = all(os.path.exists(os.path.join(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent"), name))
                 for name in chat_template.BPE_CACHE_NAMES.values())  # (bench/gpu_check.py fills one)
HAVE_BPE = SHARED_BPE or CACHED_BPE
ALPACA_5000 = os.path.join(SHARED, "alpaca", "alpaca_5000.json")
SHAKESPEARE = os.path.join(SHARED, "tinyshakespeare", "input.txt")


def pytest_configure(config):
    # Populate a tiktoken cache once per run and point every test (and its subprocesses) at it.
    if SHARED_BPE and "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = os.path.join(ROOT, ".pytest_cache", "tiktoken")
        chat_template.fill_tiktoken_cache(os.path.join(SHARED, "gpt2"), cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache


needs_bpe = pytest.mark.skipif(not HAVE_BPE, reason="needs ../shared/data/gpt2 (the GPT-2 BPE files), or a filled "
                                                    "$TIKTOKEN_CACHE_DIR")
needs_alpaca = pytest.mark.skipif(
    not (HAVE_BPE and os.path.exists(ALPACA_5000)), reason="needs ../shared/data (GPT-2 BPE + alpaca_5000.json)"
)
needs_shakespeare = pytest.mark.skipif(
    not (HAVE_BPE and os.path.exists(SHAKESPEARE)), reason="needs ../shared/data (GPT-2 BPE + tinyshakespeare)"
)


@pytest.fixture(scope="module")
def one_thread():
    """In-process torch on one thread for a test module. Tiny tensors gain nothing from intra-op threads, and
    on a busy 2-core machine OpenMP's waiting turns each ~10 us op into milliseconds. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny model, and the settings of a tiny training run that tests start in this process
TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=64)
TINY_RUN = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=4", "--eval_iters=2",
            "--log_interval=1", "--dtype=float32", "--device=cpu", "--threads=1", "--seed=1337", "--warmup_iters=2",
            "--lr_decay_iters=40"]  # fixed, so runs of different max_iters share one learning-rate schedule


def run_script(script, *args, tiny=True):
    """A training script's real top-level code in this process (runpy), with TINY_RUN (unless tiny=False) and
    then args on its command line: later settings win."""
    argv = sys.argv
    sys.argv = [script, *(TINY_RUN if tiny else []), *map(str, args)]
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    finally:
        sys.argv = argv


def as_script(fn, *args, **kwargs):
    """fn(*args) as a script's top level runs it: a UserError that reaches the top ends it through errors.fail
    (one `error:` line, SystemExit(2)), as errors.report_user_errors makes every script do."""
    import errors

    try:
        return fn(*args, **kwargs)
    except errors.UserError as e:
        errors.fail(str(e))


def random_idx(vocab, shape=(2, 24), seed=0):
    """Token ids, seeded, without touching torch's global generator."""
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def ours_logits(model, idx):
    """Our GPT's logits for token ids idx, in eval mode, without gradients."""
    with torch.no_grad():
        return model.eval()(idx)[0]


def make_hf(seed: int = 0, initializer_range: float = 0.5, **kw):
    """A random transformers GPT2LMHeadModel whose logits are decisive (no near-tied argmax) and whose every
    tensor matters: the independent reference of test_model.py and test_lora.py."""
    from transformers import GPT2Config, GPT2LMHeadModel  # here: most tests never need transformers

    torch.manual_seed(seed)
    config = GPT2Config(initializer_range=initializer_range, bos_token_id=None, eos_token_id=None,
                        pad_token_id=None, **kw)
    hf = GPT2LMHeadModel(config)
    with torch.no_grad():
        # HF starts biases at 0 and LayerNorm gains at 1: a bias never loaded (or a gain swapped with a bias)
        # would go unnoticed. Make them random too.
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith(".weight") else 0.0) + 0.2 * torch.randn_like(p))
    return hf.eval()


def save_ckpt(path, model, meta: dict, base_model: str = "scratch") -> str:
    """A checkpoint as a trainer writes one, without the resume part (what sample.py, export_hf and init_from
    read), through checkpoint.py's one writer."""
    import checkpoint

    checkpoint.save(str(path), model, config={"init_from": base_model, "lora_rank": 0}, meta=meta,
                    script="train_sft.py", data_dir="", iter_num=0, best_val_loss=0.0, base_model=base_model)
    return str(path)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """Prepared SFT data: 24 train + 4 val short Alpaca-style records, some with an input (needs the BPE)."""
    import prepare_alpaca

    d = tmp_path_factory.mktemp("data")
    records = [{"instruction": f"Name the colour number {i}.", "input": "red blue" if i % 3 == 0 else "",
                "output": f"Colour {i} is green."} for i in range(28)]
    (d / "records.json").write_text(json.dumps(records))
    prepare_alpaca.prepare(inputs=[str(d / "records.json")], out_dir=str(d / "sft"), val_size=4)
    return str(d / "sft")
