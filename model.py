"""
GPT-2 in one file: the model, its loss, loading the published weights, and generation with a KV cache.

Same architecture as OpenAI's GPT-2 (and Hugging Face's GPT2LMHeadModel): learned position embeddings,
pre-LayerNorm transformer blocks, a GELU(tanh) MLP, causal self-attention, and an output layer that shares
its weights with the token embedding (weight tying). Module names mirror Hugging Face's, so loading their
checkpoints is a rename-free copy (plus one transpose, see _load_hf_weights).

The one cross-entropy of the project lives here (`cross_entropy`): both training scripts call it through
`model(idx, targets)`. Positions whose target is -100 are not learned from; that is how SFT masks prompts.
"""

import inspect
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from download import download

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's convention for "no target here"


@dataclass
class GPTConfig:
    block_size: int = 1024  # the context window (GPT-2's n_positions)
    vocab_size: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64: room for chat tokens, faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in its Linear and LayerNorm layers
    layer_norm_epsilon: float = 1e-5


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose target is not -100.

    A batch with no targets at all gives 0.0 (with zero gradients), not the NaN of 0/0: a micro-batch can
    be fully masked in SFT, and one NaN would poison the whole update.
    """
    logits = logits.reshape(-1, logits.size(-1)).float()  # the softmax wants fp32 even under bf16 autocast
    targets = targets.reshape(-1)
    loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    n_targets = (targets != IGNORE_INDEX).sum()
    return loss_sum / n_targets.clamp(min=1)


class Linear(nn.Linear):
    """nn.Linear with a fast path for the few-row matmuls of generation on CPU.

    Decoding feeds every layer one row per sequence. PyTorch multiplies an fp32 weight by so few rows with a
    kernel (MKL's matrix-vector product) that uses one core however many there are. Cut into 16 blocks of
    rows, the same product becomes a batched matmul whose blocks run on every core: fp32 generation 2x
    faster on 2 cores (bench.py (b)), same tokens. More than 32 rows (training), GPUs, bf16 weights and
    autocast take nn.Linear's path. Measured with PyTorch's x86 wheels (MKL); recheck bench.py (b) elsewhere.
    """

    def forward(self, x):
        rows, n_out = x.numel() // self.in_features, self.out_features
        if (rows > 32 or x.device.type != "cpu" or self.weight.dtype != torch.float32 or n_out % 16
                or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        blocks = self.weight.view(16, n_out // 16, self.in_features)
        y = torch.bmm(blocks, x.reshape(rows, self.in_features).t().expand(16, -1, -1))  # (16, n_out/16, rows)
        y = y.reshape(n_out, rows).t()
        if self.bias is not None:
            y = y + self.bias
        return y.contiguous().view(*x.shape[:-1], n_out)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, pos=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None:
            # Generation: keep every key/value computed so far, so each new token costs one position, not T.
            k_cache, v_cache = kv_cache
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]
        # A single new token may attend to everything before it, so it needs no mask. Several tokens need the
        # causal mask, and SDPA's is_causal is only right when they start at position 0 (the prefill).
        assert T == 1 or pos == 0, "multi-token steps with a KV cache must start at position 0"
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=T > 1
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, pos=0):
        x = x + self.attn(self.ln_1(x), kv_cache, pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token and writing a token use the same vectors (GPT-2 does this; it also
        # saves vocab_size * n_embd parameters). One Parameter, two uses.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink the projections into it.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True) -> int:
        n = sum(p.numel() for p in self.parameters())  # the tied weight is counted once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden(self, idx, kv_cache=None, pos=0):
        """The final hidden states (B, T, n_embd) of tokens idx sitting at positions pos .. pos+T-1."""
        B, T = idx.size()
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos + T} is longer than block_size={self.config.block_size}")
        positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_cache is None else kv_cache[i], pos)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None):
        """Without targets: (logits (B, T, vocab_size), None). With targets: (None, loss), the mean
        cross-entropy over the positions whose target is not -100."""
        h = self.hidden(idx)
        if targets is None:
            return self.lm_head(h), None
        # Compute the output layer only where there is a target. It is the model's widest matmul (vocab_size
        # columns), and in SFT a third of the positions are prompt or padding: their logits would be computed
        # only to be thrown away. Same loss, same gradients; a faster step (BENCHMARKS.md).
        has_target = targets != IGNORE_INDEX
        return None, cross_entropy(self.lm_head(h[has_target]), targets[has_target])

    # ------------------------------------------------------------------------------------------------------
    # Loading GPT-2 (or any GPT-2-architecture checkpoint in Hugging Face's layout)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, vocab_size: int | None = None, dropout: float = 0.0,
                        cache_dir: str | None = None) -> "GPT":
        """Load "gpt2" (-medium/-large/-xl), "distilgpt2", a hub repo "org/name", or a local directory.

        vocab_size larger than the checkpoint's grows the embedding: new rows start at the mean of the
        pretrained rows (a neutral token, neither random noise nor a copy of a real token).
        """
        folder = name_or_dir if os.path.isdir(name_or_dir) else fetch_hf_checkpoint(name_or_dir, cache_dir)
        with open(os.path.join(folder, "config.json")) as f:
            hf = json.load(f)
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{name_or_dir}: model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints load")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{name_or_dir}: activation_function {hf['activation_function']!r} is not GPT-2's")
        unsupported = {k: hf[k] for k, ok in (("scale_attn_by_inverse_layer_idx", False),
                                              ("reorder_and_upcast_attn", False), ("scale_attn_weights", True))
                       if k in hf and hf[k] != ok}
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            unsupported["n_inner"] = hf["n_inner"]
        if unsupported:  # variants of GPT-2 that this model would compute differently: refuse, don't guess
            raise ValueError(f"{name_or_dir}: unsupported GPT-2 options {unsupported}")
        ckpt_vocab = hf["vocab_size"]
        if vocab_size is not None and vocab_size < ckpt_vocab:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the checkpoint's {ckpt_vocab}")
        config = GPTConfig(
            block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=vocab_size or ckpt_vocab,
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            dropout=dropout,
            bias=True,
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        )
        model = cls(config)
        _load_hf_weights(model, _read_state_dict(folder), ckpt_vocab, source=folder)
        return model

    # ------------------------------------------------------------------------------------------------------
    # Training helpers

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices (matmul weights, embeddings) only, never on biases or LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # The fused kernel does the whole update in one pass: 3x faster than the default on CPU (BENCHMARKS.md).
        fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cpu", "cuda", "mps")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * T * C."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * seq_len * cfg.n_embd

    # ------------------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=(),
                 vocab_size=None, use_cache=True, generator=None, on_token=None):
        """Continue each row of idx (B, T) by up to max_new_tokens tokens and return (B, T + n).

        temperature 0 is greedy. A row stops after it emits any of stop_tokens; afterwards it repeats that
        token while the other rows go on, and generation ends when every row has stopped. vocab_size limits
        sampling to the tokenizer's ids, so rows of a padded embedding are never produced. on_token(next_ids)
        is called with each new (B,) column, for streaming.
        """
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        kv_cache = None
        for _ in range(max_new_tokens):
            T = idx.size(1)
            if use_cache and T <= block_size:
                if kv_cache is None:  # prefill: the whole prompt once
                    kv_cache = self._new_kv_cache(idx.size(0), min(block_size, T + max_new_tokens), idx.device)
                    h = self.hidden(idx, kv_cache, 0)
                else:  # then one token per step
                    h = self.hidden(idx[:, -1:], kv_cache, T - 1)
            else:
                # No cache, or the text outgrew the context window: rerun the last block_size tokens, which
                # now sit at new positions, so no cached key is valid any more.
                h = self.hidden(idx[:, -block_size:])
            logits = self.lm_head(h[:, -1, :]).float()  # only the last position: no (B, T, vocab) tensor
            if vocab_size is not None:
                logits = logits[:, :vocab_size]
            next_ids = sample_next_token(logits, temperature, top_k, top_p, generator)
            next_ids = torch.where(done, idx[:, -1], next_ids)
            idx = torch.cat((idx, next_ids[:, None]), dim=1)
            if on_token is not None:
                on_token(next_ids)
            done |= torch.isin(next_ids, stop)
            if done.all():
                break
        self.train(was_training)
        return idx

    def _new_kv_cache(self, batch_size, max_len, device):
        cfg = self.config
        shape = (batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        dtype = self.transformer.wte.weight.dtype
        return [(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
                for _ in range(cfg.n_layer)]


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token id per row of logits (B, V): greedy at temperature 0, else sampled after top-k/top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probabilities add up to top_p (nucleus sampling).
        sorted_logits, sorted_ids = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_ids, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------
# Hugging Face checkpoints: find, download, read, copy into our modules

HF_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


def cache_root() -> str:
    return os.environ.get("NANOSFT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanosft"))


def fetch_hf_checkpoint(name: str, cache_dir: str | None = None) -> str:
    """Download config.json and the weights of a hub repo (once) and return the local folder."""
    repo = HF_NAMES.get(name, name)
    if repo.count("/") != 1:
        raise ValueError(
            f"{name!r} is neither a local directory nor a hub repo: use one of {sorted(HF_NAMES)}, "
            f"'org/name', or a folder holding config.json and model.safetensors"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    folder = os.path.join(cache_dir or cache_root(), repo)

    def get(filename):
        return download(f"{endpoint}/{repo}/resolve/main/{filename}", os.path.join(folder, filename),
                        desc=f"{repo}/{filename}")

    try:
        get("config.json")
    except (RuntimeError, FileNotFoundError) as e:
        raise RuntimeError(f"{name!r} is not a local folder (with config.json, or our ckpt.pt) and the hub did "
                           f"not serve it: {e}") from None
    if not os.path.exists(os.path.join(folder, "pytorch_model.bin")):
        try:
            get("model.safetensors")
        except FileNotFoundError:
            get("pytorch_model.bin")  # older repos publish only the pickle; read with weights_only=True
    return folder


def _read_state_dict(folder: str) -> dict:
    path = os.path.join(folder, "model.safetensors")
    if os.path.exists(path):
        from safetensors.torch import load_file

        return load_file(path)
    path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)  # never run pickled code from a download
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


# Hugging Face's GPT-2 uses Conv1D layers, whose weight is stored (in, out); nn.Linear stores (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _load_hf_weights(model: GPT, hf_state: dict, ckpt_vocab: int, source: str) -> None:
    ours = model.state_dict()
    loaded, unexpected, misshaped = set(), [], []
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers, not weights: SDPA's is_causal does their job
        if key == "lm_head.weight":
            continue  # tied to wte, which is loaded under its own name
        name = key if key.startswith("transformer.") else "transformer." + key  # some repos drop the prefix
        if name not in ours:
            unexpected.append(key)
            continue
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        target = ours[name]
        if (name == "transformer.wte.weight" and target.shape[0] > tensor.shape[0] == ckpt_vocab
                and tensor.shape[1:] == target.shape[1:]):
            with torch.no_grad():  # vocabulary growth: pretrained rows kept, new rows at their mean
                target[:ckpt_vocab].copy_(tensor)
                target[ckpt_vocab:].copy_(tensor.float().mean(dim=0).to(target.dtype))
            loaded.add(name)
            continue
        if tensor.shape != target.shape:
            misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
            continue
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(name)
    missing = [k for k in ours if k not in loaded and k != "lm_head.weight"]
    if missing or unexpected or misshaped:
        lines = [f"cannot load {source} into GPT:"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  wrong shape: {k}" for k in misshaped]
        raise ValueError("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Where and in what precision to run (shared by the trainers, sample.py and bench.py)


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with bf16 dot-product instructions; elsewhere bf16 is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str, device_type: str) -> str:
    """'auto' = bf16 autocast where the hardware does bf16 natively (measured 2x on such CPUs), else fp32/fp16."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def tune_cpu_allocator() -> None:
    """Stop glibc from returning big buffers to the OS after every step (the logits and their gradient).

    By default each step mmaps and unmaps them, paying page faults every time: keeping them made a CPU
    training step 2x faster here (see BENCHMARKS.md). Same effect as MALLOC_MMAP_MAX_=0 and a large
    MALLOC_TRIM_THRESHOLD_; a no-op where glibc is absent.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: never serve a malloc with its own mmap
        libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD: -1 becomes SIZE_MAX (glibc takes it as size_t): never trim
    except (OSError, AttributeError):
        pass
