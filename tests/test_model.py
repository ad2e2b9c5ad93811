"""model.py against an independent reference: Hugging Face's GPT2LMHeadModel (random weights, tiny configs).

Every checkpoint here is written by transformers' own save_pretrained and read back by GPT.from_pretrained;
logits, losses and generated tokens are compared with what transformers computes from the same weights.
"""

import itertools
import json
import math
import os
import shutil
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import make_hf, ours_logits, random_idx
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from errors import UserError
from model import GPT, GPTConfig, cross_entropy, sample_next_token

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# Unlike GPT-2 on purpose (layers, heads, width, context, vocabulary), so no shape can be hard-coded.
CONFIGS = {
    "3l-4h-64e-v300": dict(n_layer=3, n_head=4, n_embd=64, n_positions=128, vocab_size=300),
    "2l-2h-48e-v1000": dict(n_layer=2, n_head=2, n_embd=48, n_positions=64, vocab_size=1000),
}
ATOL_LOGITS = 1e-4
ATOL_LOSS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def save_hf(hf: GPT2LMHeadModel, folder) -> str:
    hf.save_pretrained(str(folder))
    assert os.path.exists(os.path.join(folder, "model.safetensors"))
    return str(folder)


@pytest.fixture(scope="module", params=list(CONFIGS))
def ckpt(request, tmp_path_factory):
    """(hf model, folder holding its save_pretrained checkpoint), for each config."""
    hf = make_hf(seed=1, **CONFIGS[request.param])
    return hf, save_hf(hf, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The first config only: for the generation tests, which compare many sequences."""
    hf = make_hf(seed=2, **CONFIGS["3l-4h-64e-v300"])
    folder = save_hf(hf, tmp_path_factory.mktemp("small"))
    model = GPT.from_pretrained(folder).eval()
    return hf, folder, model


def hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


def hf_greedy(hf, idx, n):
    out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                      do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (idx.size(0), idx.size(1) + n), "transformers stopped early: the reference is unusable"
    return out


def assert_tied(model):
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


# ----------------------------------------------------------------------------------------------------------
# Parity with transformers: logits, loss, greedy generation


def test_logits_and_loss_match_transformers(ckpt):
    hf, folder = ckpt
    cfg = hf.config
    model = GPT.from_pretrained(folder).eval()
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (cfg.n_layer, cfg.n_head, cfg.n_embd)
    assert (model.config.block_size, model.config.vocab_size) == (cfg.n_positions, cfg.vocab_size)

    idx = random_idx(cfg.vocab_size, (3, cfg.n_positions), seed=3)  # the full context window
    ref = hf_logits(hf, idx)
    logits = ours_logits(model, idx)
    assert logits.shape == ref.shape
    assert (logits - ref).abs().max().item() < ATOL_LOGITS
    # The weights must be decisive for the generation tests to mean anything.
    top2 = ref.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).median() > 0.1

    # Loss: HF shifts its labels itself; our targets are already shifted (targets[t] follows idx[t]).
    labels = random_idx(cfg.vocab_size, idx.shape, seed=4)
    labels[0, :20] = -100  # a masked prompt
    labels[1, 5::3] = -100  # scattered holes
    labels[2, :] = -100  # a fully masked row
    with torch.no_grad():
        ref_loss = hf(idx, labels=labels).loss
        targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        _, loss = model(idx, targets)
    assert torch.isfinite(loss)
    assert abs(loss.item() - ref_loss.item()) < ATOL_LOSS


def test_gradients_with_masked_targets_match_transformers(ckpt):
    """Our forward computes the output layer only at positions with a target; HF computes every logit and
    masks afterwards. The gradients of every weight must be the same."""
    hf, folder = ckpt
    cfg = hf.config
    model = GPT.from_pretrained(folder).eval()  # eval: no dropout in either model; gradients still flow
    idx = random_idx(cfg.vocab_size, (3, 40), seed=5)
    labels = random_idx(cfg.vocab_size, idx.shape, seed=6)
    labels[0, :25] = -100  # a prompt
    labels[1, 3::2] = -100  # holes
    labels[2, 30:] = -100  # padding after the response
    hf.zero_grad(set_to_none=True)
    hf(idx, labels=labels).loss.backward()
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    model(idx, targets)[1].backward()
    hf_grads = dict(hf.named_parameters())
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    for name, p in model.named_parameters():  # lm_head.weight is wte.weight: listed once, as wte
        ref = hf_grads[name].grad
        ref = ref.t() if name.endswith(conv1d) else ref
        assert torch.allclose(p.grad, ref, atol=1e-5, rtol=1e-4), f"{name}: max diff {(p.grad - ref).abs().max()}"
    hf.zero_grad(set_to_none=True)


def test_greedy_generate_matches_transformers(ckpt):
    hf, folder = ckpt
    model = GPT.from_pretrained(folder)
    idx = random_idx(hf.config.vocab_size, (2, 9), seed=5)
    ref = hf_greedy(hf, idx, 32)
    out = model.generate(idx, 32, temperature=0)
    assert torch.equal(out, ref)


def test_sampling_matches_transformers_with_the_same_seed(small):
    """Temperature, then top-k, then top-p, then one multinomial draw: the same recipe as transformers, so
    with the global RNG seeded alike the samples agree (this checks which tokens top-k/top-p keep)."""
    hf, _, model = small
    idx = random_idx(hf.config.vocab_size, (3, 6), seed=6)
    for temperature, top_k, top_p in [(0.8, 20, 0.9), (1.3, None, 0.7), (0.9, 5, None)]:
        torch.manual_seed(123)
        ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=24, min_new_tokens=24,
                          do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0,
                          pad_token_id=0, eos_token_id=None)
        torch.manual_seed(123)
        out = model.generate(idx, 24, temperature=temperature, top_k=top_k, top_p=top_p)
        assert torch.equal(out, ref), (temperature, top_k, top_p)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint layouts and bad checkpoints


def test_pytorch_model_bin_layout_loads_the_same(ckpt, tmp_path):
    hf, folder = ckpt
    # transformers 5 always writes safetensors; the older pickle layout is its state dict under this name.
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    assert not (tmp_path / "model.safetensors").exists()
    model = GPT.from_pretrained(str(tmp_path))
    idx = random_idx(hf.config.vocab_size, (2, 17), seed=7)
    assert (ours_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() < ATOL_LOGITS
    assert_tied(model)


def test_keys_without_transformer_prefix_load(ckpt, tmp_path):
    """openai-community/gpt2's own file: `h.0.attn.c_attn.weight`, `wte.weight`, plus the attn.bias mask buffers."""
    hf, folder = ckpt
    state = load_file(os.path.join(folder, "model.safetensors"))
    stripped = {k.removeprefix("transformer."): v.contiguous() for k, v in state.items()}
    assert "wte.weight" in stripped and "h.0.attn.c_attn.weight" in stripped
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):  # the causal-mask buffers old GPT-2 checkpoints carry
        stripped[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    save_file(stripped, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    model = GPT.from_pretrained(str(tmp_path))
    idx = random_idx(hf.config.vocab_size, (2, 17), seed=8)
    assert (ours_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() < ATOL_LOGITS
    assert_tied(model)


def _write_checkpoint(folder, state, config_json):
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, "model.safetensors"))
    shutil.copy(config_json, os.path.join(folder, "config.json"))
    return str(folder)


def test_bad_checkpoint_names_every_bad_key(small, tmp_path):
    _, folder, _ = small
    state = load_file(os.path.join(folder, "model.safetensors"))
    del state["transformer.h.1.ln_2.bias"]  # missing
    state["transformer.h.0.attn.rotary.weight"] = torch.zeros(4)  # unexpected
    state["transformer.h.2.mlp.c_fc.bias"] = torch.zeros(7)  # wrong shape
    bad = _write_checkpoint(tmp_path, state, os.path.join(folder, "config.json"))
    with pytest.raises(UserError) as e:
        GPT.from_pretrained(bad)
    msg = str(e.value)
    for key in ("h.1.ln_2.bias", "transformer.h.0.attn.rotary.weight", "h.2.mlp.c_fc.bias"):
        assert key in msg, f"{key} not named in: {msg}"


@pytest.mark.parametrize("width", [1, 72], ids=["broadcastable", "too-wide"])
def test_misshaped_wte_is_rejected_even_when_growing_the_vocabulary(small, tmp_path, width):
    """The vocabulary-growth branch of _load_hf_weights copies wte without the shape check every other tensor
    gets: a wte of the right row count but the wrong width must still be a ValueError that names it (width 1
    broadcasts into (V, n_embd) and loads silently; a wider one dies in copy_ with a RuntimeError): a UserError
    naming it."""
    _, folder, _ = small
    state = load_file(os.path.join(folder, "model.safetensors"))
    V, C = state["transformer.wte.weight"].shape
    assert width != C
    state["transformer.wte.weight"] = torch.zeros(V, width)
    bad = _write_checkpoint(tmp_path, state, os.path.join(folder, "config.json"))
    with pytest.raises(UserError, match="wte.weight"):
        GPT.from_pretrained(bad)  # without growth: the ordinary shape check catches it
    with pytest.raises(UserError, match="wte.weight"):
        GPT.from_pretrained(bad, vocab_size=V + 20)


# ----------------------------------------------------------------------------------------------------------
# Weight tying and vocabulary growth


def test_weight_tying_and_vocabulary_growth(ckpt):
    hf, folder = ckpt
    V = hf.config.vocab_size
    assert_tied(GPT.from_pretrained(folder))

    model = GPT.from_pretrained(folder, vocab_size=V + 37).eval()
    assert_tied(model)
    assert model.config.vocab_size == V + 37
    wte_ref = hf.transformer.wte.weight.detach()
    wte = model.transformer.wte.weight.detach()
    assert wte.shape == (V + 37, hf.config.n_embd)
    assert torch.equal(wte[:V], wte_ref)
    torch.testing.assert_close(wte[V:], wte_ref.mean(dim=0, keepdim=True).expand(37, -1), rtol=0, atol=1e-6)

    idx = random_idx(V, (2, 21), seed=9)
    logits = ours_logits(model, idx)
    assert logits.shape[-1] == V + 37
    assert (logits[..., :V] - hf_logits(hf, idx)).abs().max().item() < ATOL_LOGITS

    with pytest.raises(UserError, match=r"wrong shape: transformer\.wte\.weight"):  # (it cannot shrink)
        GPT.from_pretrained(folder, vocab_size=V - 1)


# ----------------------------------------------------------------------------------------------------------
# Generation: KV cache, stop tokens, sampling filters


def test_kv_cache_matches_no_cache_batch_of_one(small):
    hf, _, model = small
    idx = random_idx(hf.config.vocab_size, (1, 11), seed=10)
    ref = hf_greedy(hf, idx, 60)
    streamed = []
    cached = model.generate(idx, 60, temperature=0, on_token=streamed.append)
    assert torch.equal(cached, ref)
    assert torch.equal(torch.stack(streamed, dim=1), cached[:, idx.size(1):])  # on_token sees every column
    # A one-token prompt (prefill of length 1) too.
    assert torch.equal(model.generate(idx[:, :1], 20, temperature=0), hf_greedy(hf, idx[:, :1], 20))


def _pick_stop_tokens(new: list[list[int]]):
    """Stop tokens (one per row) under which every row stops at a different step, as far apart as possible."""
    n = len(new[0])
    candidates = [list(dict.fromkeys(row[1 : n - 4]))[:10] for row in new]  # distinct, by first appearance
    best = None
    for combo in itertools.product(*candidates):
        stops = set(combo)
        at = [next(i for i, t in enumerate(row) if t in stops) for row in new]
        gap = min(b - a for a, b in itertools.pairwise(sorted(at)))
        if gap > 0 and min(at) >= 1 and (best is None or gap > best[0]):
            best = gap, combo, at
    assert best is not None, f"no stop tokens give distinct stop steps for {new}"
    return best[1], best[2]


def test_kv_cache_matches_no_cache_with_rows_stopping_at_different_steps(small):
    hf, _, model = small
    B, T, n = 3, 8, 30
    idx = random_idx(hf.config.vocab_size, (B, T), seed=11)
    free = hf_greedy(hf, idx, n)[:, T:].tolist()  # the reference continuations, no stop tokens
    stop_tokens, at = _pick_stop_tokens(free)
    length = max(at) + 1  # generation ends once every row has stopped
    expected = torch.tensor([row[: s + 1] + [row[s]] * (length - s - 1) for row, s in zip(free, at, strict=True)])
    expected = torch.cat([idx, expected], dim=1)

    cached = model.generate(idx, n, temperature=0, stop_tokens=stop_tokens)
    assert torch.equal(cached, expected)
    for r, s in enumerate(at):  # each row: its stop token at step s, then only that token
        new = cached[r, T:]
        assert new[s].item() in stop_tokens
        assert not any(t in stop_tokens for t in new[:s].tolist())
        assert (new[s:] == new[s]).all()


def test_generation_stops_when_the_context_window_is_full(small):
    hf, _, model = small
    block = model.config.block_size
    idx = random_idx(hf.config.vocab_size, (2, block - 20), seed=12)
    out = model.generate(idx, 45, temperature=0)  # asks for 25 more than fit
    assert out.shape == (2, block)
    assert torch.equal(out, hf_greedy(hf, idx, 20))
    with pytest.raises(ValueError, match="block_size"):  # a prompt already longer than the window
        model.generate(random_idx(hf.config.vocab_size, (1, block + 5), seed=13), 10, temperature=0)


@torch.no_grad()
def _sample_without_cache(model, idx, n, generator, **filters):
    """The reference the KV cache must reproduce: every step reruns the whole sequence through the model."""
    for _ in range(n):
        logits = model(idx)[0][:, -1].float()
        idx = torch.cat([idx, sample_next_token(logits, generator=generator, **filters)[:, None]], dim=1)
    return idx


def test_seeded_sampling_is_the_same_with_and_without_cache(small):
    hf, _, model = small
    idx = random_idx(hf.config.vocab_size, (3, 7), seed=14)
    filters = dict(temperature=0.8, top_k=40, top_p=0.9)
    cached = model.generate(idx, 40, generator=torch.Generator().manual_seed(77), **filters)
    assert torch.equal(cached, _sample_without_cache(model, idx, 40, torch.Generator().manual_seed(77), **filters))
    other = model.generate(idx, 40, generator=torch.Generator().manual_seed(78), **filters)
    assert not torch.equal(other, cached)  # the generator is really what drives the draws


def test_generate_vocab_size_never_samples_padded_rows(small):
    hf, folder, _ = small
    V = hf.config.vocab_size
    model = GPT.from_pretrained(folder, vocab_size=V + 20)
    with torch.no_grad():  # make the padded rows the most likely by far
        model.transformer.wte.weight[V:] = 100.0 * torch.randn(20, model.config.n_embd,
                                                               generator=torch.Generator().manual_seed(0))
    idx = random_idx(V, (4, 5), seed=15)
    unrestricted = model.generate(idx, 8, temperature=0)
    assert (unrestricted[:, 5:] >= V).any(), "the padded rows should win without vocab_size: test is vacuous"
    for kw in (dict(temperature=0), dict(temperature=1.0), dict(temperature=2.0, top_k=50, top_p=0.99)):
        g = torch.Generator().manual_seed(1)
        out = model.generate(idx, 30, vocab_size=V, generator=g, **kw)
        assert (out[:, 5:] < V).all(), kw
    # and the greedy ids with vocab_size are transformers' greedy ids on the unpadded checkpoint
    assert torch.equal(model.generate(idx, 20, temperature=0, vocab_size=V), hf_greedy(hf, idx, 20))


def test_top_k_1_and_tiny_top_p_are_greedy(small):
    hf, _, model = small
    idx = random_idx(hf.config.vocab_size, (3, 6), seed=16)
    greedy = hf_greedy(hf, idx, 25)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(idx, 25, temperature=1.5, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(idx, 25, temperature=1.5, top_p=1e-9, generator=g), greedy)


def test_generate_restores_training_mode(small):
    _, folder, _ = small
    model = GPT.from_pretrained(folder).train()
    model.generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=0)
    assert model.training


# ----------------------------------------------------------------------------------------------------------
# The loss


def test_untrained_loss_is_log_vocab():
    torch.manual_seed(0)
    V = 500
    model = GPT(GPTConfig(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32))
    idx = random_idx(V, (8, 32), seed=17)
    targets = random_idx(V, (8, 32), seed=18)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.1


def test_all_masked_batch_gives_zero_loss_and_zero_grads():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    loss = cross_entropy(h, weight, torch.full((2, 5), -100))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    for grad in (h.grad, weight.grad):
        assert torch.isfinite(grad).all() and (grad == 0).all()

    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    idx = torch.randint(0, 50, (2, 8))
    _, loss = model(idx, torch.full((2, 8), -100))
    assert loss.item() == 0.0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad == 0).all(), name


def _masked_targets(shape, vocab, seed):
    targets = random_idx(vocab, shape, seed)
    targets[0, :4] = -100
    targets[-1, 1::2] = -100
    return targets


def test_loss_ignores_masked_positions():
    torch.manual_seed(0)
    h, weight = 3 * torch.randn(3, 7, 6), torch.randn(13, 6)
    targets = _masked_targets((3, 7), 13, seed=20)
    keep = targets != -100
    logp = F.log_softmax((h[keep] @ weight.t()).double(), dim=-1)  # only the unmasked positions
    by_hand = -logp.gather(1, targets[keep][:, None]).mean()
    assert abs(cross_entropy(h, weight, targets).item() - by_hand.item()) < 1e-5
    # The hidden states at masked positions do not matter at all.
    scrambled = h.clone()
    scrambled[~keep] = 1e4 * torch.randn_like(scrambled[~keep])
    assert cross_entropy(scrambled, weight, targets).item() == cross_entropy(h, weight, targets).item()


@pytest.mark.parametrize("rows_per_chunk, rows_multiple", [(1, 1), (7, 1), (1000, 1), (8, 8), (1000, 256)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(rows_per_chunk, rows_multiple, dtype, monkeypatch):
    """The loss works a few rows of logits at a time and forms the gradient itself: loss, d/dh and d/dweight
    must be those of PyTorch's F.cross_entropy over the whole logits, whatever the chunking (a last chunk
    shorter than the others included, and the zero rows that pad the rows to a multiple under bf16 autocast:
    29 targets become 32 or 256 rows), in fp32 and under bf16 autocast."""
    import chunked_loss

    V, C = 37, 16
    monkeypatch.setattr(chunked_loss, "LOSS_CHUNK", rows_per_chunk * V)
    monkeypatch.setattr(chunked_loss, "LOSS_ROWS_MULTIPLE", rows_multiple)
    torch.manual_seed(1)
    h = torch.randn(4, 9, C, requires_grad=True)
    weight = torch.randn(V, C, requires_grad=True)
    targets = _masked_targets((4, 9), V, seed=21)  # 29 targets: chunks of 7 leave a last chunk of 1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with autocast:
        ours = cross_entropy(h, weight, targets)
    (2.5 * ours).backward()  # a scale on the way back, as the trainers' accumulation weights apply
    ours_grads = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    with autocast:
        logits = (h @ weight.t()).float()
    ref = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
    (2.5 * ref).backward()
    tol = 1e-6 if dtype == "float32" else 1e-2
    assert abs(ours.item() - ref.item()) < tol * 10
    for got, want in zip(ours_grads, (h.grad, weight.grad), strict=True):
        assert got.dtype == want.dtype
        assert torch.allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_fused_loss_equals_the_chunked_one_forward_and_backward(dtype):
    """loss_path="fused" (one F.cross_entropy over every position, what a compiled run uses) and "chunked" (the
    eager path, logits at the targets only) are one loss: the same value and the same gradients, through the
    model, masked positions and an all-masked row included, in fp32 and under bf16 autocast."""
    torch.manual_seed(3)
    losses, grads = {}, {}
    for path in ("chunked", "fused"):
        torch.manual_seed(3)
        model = GPT(GPTConfig(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=16, loss_path=path))
        idx, targets = random_idx(61, (3, 16), seed=26), _masked_targets((3, 16), 61, seed=27)
        targets[1] = -100  # a row with no target at all
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            _, loss = model(idx, targets)
        loss.backward()
        losses[path], grads[path] = loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}
    tol = 1e-6 if dtype == "float32" else 2e-2
    assert losses["fused"] == pytest.approx(losses["chunked"], rel=tol)
    for name, g in grads["chunked"].items():
        assert (grads["fused"][name] - g).norm() <= tol * g.norm() + 1e-8, name


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """gradient_checkpointing recomputes each block's activations in the backward pass instead of keeping them:
    the loss and every gradient must be the same (fp32, within 1e-6), with dropout on (the recomputation replays
    the same random masks) and packed rows (the document mask passes through)."""
    results, kept = [], []
    for recompute in (False, True):
        torch.manual_seed(4)
        model = GPT(GPTConfig(block_size=16, vocab_size=61, n_layer=3, n_head=2, n_embd=16, dropout=0.1,
                              gradient_checkpointing=recompute)).train()
        idx, targets = random_idx(61, (2, 16), seed=28), _masked_targets((2, 16), 61, seed=29)
        positions = torch.tensor([list(range(10)) + list(range(6)), list(range(16))])
        torch.manual_seed(5)
        saved = []  # every tensor autograd keeps for the backward pass during the forward

        def keep(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            _, loss = model(idx, targets, positions)
        kept.append(sum(saved))
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    assert kept[1] < kept[0] / 2, f"checkpointing kept {kept[1]} numbers for the backward pass, plain {kept[0]}"
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-6 * abs(loss_a)
    for name, g in grads_a.items():
        assert (grads_b[name] - g).abs().max().item() <= 1e-6 * max(1.0, g.abs().max().item()), name


def test_loss_with_bf16_weights_and_no_autocast():
    """sample.py --eval_text runs the loss on bf16 weights without autocast (its weights are cast for speed):
    the loss must be PyTorch's on the same bf16 logits, in training mode and under no_grad alike."""
    torch.manual_seed(2)
    model = GPT(GPTConfig(block_size=16, vocab_size=97, n_layer=1, n_head=2, n_embd=16)).to(torch.bfloat16)
    idx, targets = random_idx(97, (3, 16), seed=22), _masked_targets((3, 16), 97, seed=23)
    logits = model(idx)[0].float()
    ref = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-100)
    _, loss = model(idx, targets)
    assert abs(loss.item() - ref.item()) < 1e-4
    loss.backward()
    assert model.transformer.wte.weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        assert abs(model(idx, targets)[1].item() - ref.item()) < 1e-4


def test_loss_under_no_grad_does_no_gradient_work():
    """Evaluation (estimate_loss, --eval_text) runs under no_grad: the loss must not form the gradient too,
    which would triple the output layer's work."""
    model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    idx = random_idx(50, (2, 8), seed=24)
    with torch.no_grad(), mock.patch.object(torch, "mm", wraps=torch.mm) as mm:
        model(idx, idx)
    assert not mm.called, "a gradient matmul ran under no_grad"
    with mock.patch.object(torch, "mm", wraps=torch.mm) as mm:
        model(idx, idx)
    assert mm.called, "the check above is vacuous: torch.mm is what forms the fp32 gradient"


def test_a_frozen_output_layer_gets_no_gradient_work():
    """LoRA freezes the tied embedding/output weight: the loss must still give the hidden states their exact
    gradient, and not form the (vocab x n_embd) weight gradient nobody asked for."""
    torch.manual_seed(25)
    h = torch.randn(12, 16, requires_grad=True)
    weight = torch.randn(50, 16)  # frozen
    targets = torch.randint(0, 50, (12,))
    targets[:3] = -100
    calls, addmm_ = [], torch.Tensor.addmm_  # addmm_ is what forms the fp32 weight gradient

    def spy(self, *args, **kwargs):
        calls.append(self.shape)
        return addmm_(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "addmm_", spy):
        cross_entropy(h, weight, targets).backward()
        assert not calls, "the weight gradient was formed for a frozen weight"
        reference = h.detach().clone().requires_grad_(True)
        F.cross_entropy(reference @ weight.t(), targets, ignore_index=-100).backward()
        assert torch.allclose(h.grad, reference.grad, atol=1e-6)
        cross_entropy(h, weight.requires_grad_(True), targets).backward()
        assert calls, "the check above is vacuous: no weight gradient was formed for a trainable weight either"


def test_config_json_is_read_not_assumed(tmp_path):
    """layer_norm_epsilon and n_positions come from config.json (transformers honours them too)."""
    hf = make_hf(seed=3, n_layer=1, n_head=2, n_embd=32, n_positions=40, vocab_size=120, layer_norm_epsilon=1e-2)
    folder = save_hf(hf, tmp_path)
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["layer_norm_epsilon"] == 1e-2
    model = GPT.from_pretrained(folder)
    assert model.config.block_size == 40
    assert model.config.layer_norm_epsilon == 1e-2
    idx = random_idx(120, (2, 40), seed=19)
    assert (ours_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() < ATOL_LOGITS
