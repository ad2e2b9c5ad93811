"""lora.py and LoRA runs of the trainers: checked against peft (the reference implementation of LoRA) and
transformers, never against lora.py's own formulas.

What is checked: with B = 0 a LoRA model is the base model to the last bit; its logits equal peft's LoRA on
transformers' GPT-2 with the same weights and adapters, and so does the trainable-parameter count; merging
changes no output; gradients reach only the adapters (and the chat tokens' rows); a LoRA run of train_sft.py
leaves every frozen weight bit-identical, counts its trainable weights on the start-up line, resumes exactly,
and its checkpoint loads in sample.py and exports to a folder transformers reads with the same logits.
"""

import copy
import io
import os
from contextlib import redirect_stdout

import pytest
import torch
from conftest import TINY_MODEL, make_hf, needs_bpe, ours_logits, random_idx, run_script, save_ckpt
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import checkpoint
import export_hf
import lora
from errors import UserError
from model import GPT, GPTConfig

hf_logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")

CHAT_VOCAB = 50304  # GPT-2's 50257 tokens, then the chat template's (50257, 50258) and padding rows
# LoRA's trainable weights in TINY_MODEL at rank 4, by hand: 2 blocks x rank x (in + out) of each target layer,
# c_attn 32 -> 96, attn.c_proj 32 -> 32, c_fc 32 -> 128, mlp.c_proj 128 -> 32
ADAPTER_WEIGHTS = 2 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))


def tiny_gpt(seed=0, vocab_size=CHAT_VOCAB) -> GPT:
    """A random tiny GPT whose biases and LayerNorms are random too (not 0 and 1): an adapter that dropped
    its layer's bias would change the outputs."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY_MODEL, vocab_size=vocab_size))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
                        + 0.2 * torch.randn_like(p))
    return model


def randomize_adapters(model, seed=1):
    """Trained-looking adapters: B != 0 (and new rows moved), so that every part of the update shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------------------
# lora.py in-process


def test_b_zero_gives_the_base_models_logits_exactly():
    base = tiny_gpt()
    model = lora.apply_lora(copy.deepcopy(base), rank=4, alpha=8.0)
    idx = random_idx(50259)
    assert torch.equal(ours_logits(model, idx), ours_logits(base, idx))
    y = random_idx(50259, seed=1)
    assert torch.equal(model(idx, y)[1], base(idx, y)[1])


@pytest.fixture(scope="module")
def peft_pair():
    """transformers' GPT-2 with peft's LoRA, and our GPT with lora.py's, with the same weights and adapters."""
    hf = make_hf(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300, initializer_range=0.3)
    ours = GPT(GPTConfig(**TINY_MODEL, vocab_size=300))
    state = {k: v for k, v in hf.state_dict().items() if not k.endswith(".attn.bias")}
    for k, v in state.items():  # transformers' Conv1D stores (in, out): our Linear's weight is its transpose
        conv = k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        state[k] = v.t() if conv else v
    result = ours.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) <= {"lm_head.weight"}  # tied: wte's tensor
    ours.eval()
    rank, alpha = 4, 12.0  # alpha / rank = 3, not 1: a convention slip (alpha, or alpha / rank) would show
    peft_model = get_peft_model(hf, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, fan_in_fan_out=True,
                                               target_modules=["c_attn", "c_proj", "c_fc"])).eval()
    lora.apply_lora(ours, rank, alpha, "c_attn,c_proj,c_fc")
    randomize_adapters(ours)
    with torch.no_grad():
        for i, block in enumerate(ours.transformer.h):
            for layer in lora.LAYERS:
                part, name = layer.split(".")
                mine = getattr(getattr(block, part), name)
                theirs = getattr(getattr(peft_model.base_model.model.transformer.h[i], part), name)
                theirs.lora_A["default"].weight.copy_(mine.lora_A)
                theirs.lora_B["default"].weight.copy_(mine.lora_B)
    return peft_model, ours


def test_logits_match_peft(peft_pair):
    peft_model, ours = peft_pair
    idx = random_idx(300, (2, 64))
    with torch.no_grad():
        theirs = peft_model(input_ids=idx).logits
    assert (ours_logits(ours, idx) - theirs).abs().max().item() < 1e-4
    with torch.no_grad(), peft_model.disable_adapter():
        base = peft_model(input_ids=idx).logits
    assert (theirs - base).abs().max().item() > 1e-2  # the adapters change the outputs: the match means something


def test_trainable_parameter_count_matches_peft(peft_pair):
    peft_model, ours = peft_pair
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable
    assert trainable == ADAPTER_WEIGHTS  # and by hand


def test_merged_model_matches_peft_merge_and_unmerged_ours(peft_pair):
    peft_model, ours = peft_pair
    idx = random_idx(300, (2, 64), seed=3)
    unmerged = ours_logits(ours, idx)
    merged = lora.merge_lora(copy.deepcopy(ours))
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    assert (ours_logits(merged, idx) - unmerged).abs().max().item() < 1e-5
    hf_merged = copy.deepcopy(peft_model).merge_and_unload()
    with torch.no_grad():
        assert (ours_logits(merged, idx) - hf_merged(input_ids=idx).logits).abs().max().item() < 1e-4


def test_merge_with_chat_token_rows_keeps_outputs_and_tying():
    model = lora.apply_lora(tiny_gpt(), rank=4, alpha=8.0)
    randomize_adapters(model)
    idx = random_idx(50259, seed=4)
    unmerged = ours_logits(model, idx)
    lora.merge_lora(model)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied again
    assert set(model.state_dict()) == set(tiny_gpt().state_dict())  # a plain GPT's keys, nothing else
    assert (ours_logits(model, idx) - unmerged).abs().max().item() < 1e-5
    assert all(p.requires_grad for p in model.parameters())


def test_gradients_reach_only_adapters_and_chat_token_rows():
    base = tiny_gpt()
    model = lora.apply_lora(copy.deepcopy(base), rank=4, alpha=8.0)
    randomize_adapters(model)  # B != 0, so that A gets a gradient too
    idx, y = random_idx(50259), random_idx(50259, seed=1)
    y[:, :3] = 50258  # <|im_end|> as a target: its row must learn
    model(idx, y)[1].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B", "rows"))}
    assert with_grad == trainable == expected and len(expected) == 2 * 4 * 2 + 1
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)

    # A few optimizer steps (the trainers' own optimizer): every frozen weight is bit-identical afterwards,
    # the chat tokens' rows have moved, GPT-2's rows have not.
    optimizer = model.configure_optimizer(0.1, 1e-2, (0.9, 0.95), "cpu")
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    for _ in range(3):
        optimizer.zero_grad()
        model(idx, y)[1].backward()
        optimizer.step()
    merged_state = lora.merge_lora(copy.deepcopy(model)).state_dict()
    for name, p in base.state_dict().items():
        if name in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(merged_state[name][: lora.FIRST_NEW_TOKEN], p[: lora.FIRST_NEW_TOKEN])
            assert not torch.equal(merged_state[name][lora.FIRST_NEW_TOKEN :], p[lora.FIRST_NEW_TOKEN :])
    for name, p in model.named_parameters():
        if not p.requires_grad and not name.startswith(("transformer.wte", "lm_head")):
            assert torch.equal(p, base.get_parameter(name)), name


def test_trainable_summary_names_what_trains():
    assert lora.trainable_summary(tiny_gpt(vocab_size=300)) == "training every weight"
    model = lora.apply_lora(tiny_gpt(vocab_size=300), rank=4, alpha=8.0)  # no chat tokens: adapters only
    n, total = ADAPTER_WEIGHTS, sum(p.numel() for p in model.parameters())
    assert lora.trainable_summary(model) == f"LoRA: training {n:,} weights (adapters), {n / total:.2%} of all weights"


def test_applying_lora_twice_is_refused():
    model = lora.apply_lora(tiny_gpt(), rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.apply_lora(model, rank=4, alpha=8.0)


def test_targets_pick_layers():
    assert lora.parse_targets("c_attn,c_proj,c_fc") == list(lora.LAYERS)
    assert lora.parse_targets("c_proj") == ["attn.c_proj", "mlp.c_proj"]
    assert lora.parse_targets(" attn.c_attn , mlp.c_proj ") == ["attn.c_attn", "mlp.c_proj"]
    model = lora.apply_lora(tiny_gpt(vocab_size=300), rank=2, alpha=2.0, targets="attn.c_attn")
    adapted = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}  # no rows: vocab 300


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=-1), "lora_rank=-1: give a positive rank"),
    (dict(rank=0), "lora_rank=0: give a positive rank"),
    (dict(alpha=0.0), "lora_alpha=0.0: give a positive scale"),
    (dict(targets="q_proj"), "lora_targets: unknown layer 'q_proj'; valid names: attn.c_attn"),
    (dict(targets=" , "), "names no layer"),
    (dict(dropout=1.0), "lora_dropout=1.0"),
])
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        lora.apply_lora(tiny_gpt(vocab_size=300), **(dict(rank=4, alpha=8.0) | kwargs))


# ----------------------------------------------------------------------------------------------------------
# A LoRA run of train_sft.py, in-process (its real top-level code through runpy)

def run_sft(*args):
    run_script("train_sft.py", "--learning_rate=1e-2", "--lora_rank=4", "--lora_alpha=8", *args)


@pytest.fixture(scope="module")
def lora_runs(sft_data, tmp_path_factory, one_thread):
    """A base checkpoint, a 6-step LoRA SFT run from it, and the same run stopped at step 3 and resumed."""
    d = tmp_path_factory.mktemp("lora")
    base = tiny_gpt(seed=5)
    save_ckpt(d / "base" / "ckpt.pt", base, meta={})
    common_args = [f"--init_from={d / 'base'}", f"--data_dir={sft_data}"]
    log = io.StringIO()
    with redirect_stdout(log):
        run_sft(*common_args, f"--out_dir={d / 'full'}", "--max_iters=6", "--eval_interval=3")
    run_sft(*common_args, f"--out_dir={d / 'resumed'}", "--max_iters=3", "--eval_interval=3")
    run_sft(f"--data_dir={sft_data}", f"--out_dir={d / 'resumed'}", "--max_iters=6", "--eval_interval=3",
            "--init_from=resume")
    return {"dir": d, "base": base, "log": log.getvalue(), "full": str(d / "full"), "resumed": str(d / "resumed"),
            "data": sft_data}


def load(path):
    return checkpoint.load_checkpoint(os.path.join(path, "ckpt.pt"))


@needs_bpe
def test_start_up_line_counts_trainable_weights(lora_runs):
    # by hand: 2 blocks x rank 4 x (in + out) of c_attn, attn.c_proj, c_fc, mlp.c_proj; 47 chat/padding rows
    n = ADAPTER_WEIGHTS + (CHAT_VOCAB - 50257) * 32
    assert f"LoRA: training {n:,} weights (adapters and the chat tokens' rows)" in lora_runs["log"]


@needs_bpe
def test_lora_run_leaves_frozen_weights_bit_identical(lora_runs):
    ckpt = load(lora_runs["full"])
    assert ckpt["config"]["lora_rank"] == 4 and ckpt["iter_num"] == 6
    state, base = ckpt["model"], lora_runs["base"].state_dict()
    for name, p in base.items():
        if name in ("transformer.wte.weight", "lm_head.weight"):
            continue
        assert torch.equal(state[name], p), name
    frozen = state["transformer.wte.parametrizations.weight.original"]
    assert torch.equal(frozen, base["transformer.wte.weight"])
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith("lora_B"))  # the adapters did learn
    # the optimizer holds state for the trainable tensors only
    n_state = sum(s["exp_avg"].numel() for s in ckpt["optimizer"]["state"].values())
    assert n_state == sum(v.numel() for k, v in state.items()  # (lm_head's keys name the tied tensors again)
                          if k.endswith(("lora_A", "lora_B", ".rows")) and not k.startswith("lm_head"))


@needs_bpe
def test_lora_run_resumes_exactly(lora_runs):
    full, resumed = load(lora_runs["full"]), load(lora_runs["resumed"])
    assert full["model"].keys() == resumed["model"].keys()
    for name in full["model"]:
        assert torch.equal(full["model"][name], resumed["model"][name]), name


@needs_bpe
def test_sample_py_loads_a_lora_checkpoint_merged(lora_runs):
    ckpt = load(lora_runs["full"])
    unmerged = checkpoint.model_from_checkpoint(ckpt, merge=False)
    loaded, _ = checkpoint.load_model(lora_runs["full"], "cpu", torch.float32)  # what sample.py opens models with
    assert not any(isinstance(m, lora.LoRALinear) for m in loaded.modules())
    idx = random_idx(50259, seed=6)
    assert (ours_logits(loaded, idx) - ours_logits(unmerged, idx)).abs().max().item() < 1e-5


@needs_bpe
def test_export_of_a_lora_run_loads_in_transformers_with_our_logits(lora_runs, tmp_path):
    out = str(tmp_path / "hf")
    export_hf.main([f"--ckpt={lora_runs['full']}", f"--out={out}"])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    unmerged = checkpoint.model_from_checkpoint(load(lora_runs["full"]), merge=False)
    idx = random_idx(50259, (2, 64), seed=7)
    with torch.no_grad():
        theirs = hf(idx).logits
    assert (theirs - ours_logits(unmerged, idx)[..., :50259]).abs().max().item() < 1e-4
