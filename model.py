"""
GPT-2 in one file: the model, generation with a KV cache, and the loss.

Same architecture as OpenAI's GPT-2 (and Hugging Face's GPT2LMHeadModel): learned position
embeddings, pre-LayerNorm transformer blocks, a GELU(tanh) MLP, causal self-attention, and an output
layer that shares its weights with the token embedding (weight tying). Module names mirror Hugging
Face's, so loading their checkpoints is a rename-free copy (hf_checkpoint.py).

A row of input may hold several examples packed one after another (SFT does this, so that no
position is wasted on padding). `positions` then says where each example starts: positions restart
at 0 for every example, exactly as if it were alone, and attention never crosses from one example
into another.

The one cross-entropy of the project lives at the bottom (`cross_entropy`): both training scripts
call it through `model(idx, targets, positions)`. Positions whose target is -100 are not learned
from; that is how SFT masks prompts. How it is computed (chunked or fused) and which attention
kernel runs are each run's choice (GPTConfig's last fields), never the model's.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from chunked_loss import chunked_cross_entropy_sum

IGNORE_INDEX = -100  # PyTorch's and Hugging Face's convention for "no target here"
PADDED_VOCAB_SIZE = 50304  # GPT-2's 50257 tokens, room for the chat tokens, a multiple of 64


@dataclass
class GPTConfig:
    block_size: int = 1024  # the context window (GPT-2's n_positions)
    vocab_size: int = PADDED_VOCAB_SIZE  # a multiple of 64 makes the output layer's matmuls faster
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in its Linear and LayerNorm layers
    layer_norm_epsilon: float = 1e-5
    # How to compute, not what is learned: each run chooses these (the trainers' settings of the
    # same names); a checkpoint never keeps them, so a model trained one way runs anywhere.
    attention: str = "sdpa"  # packed rows' document mask: "sdpa" (booleans), "flex" (FlexAttention)
    loss_path: str = "chunked"  # "chunked" (logits at targets only), "fused" (one F.cross_entropy)
    gradient_checkpointing: bool = False  # keep no activations inside blocks: recompute them

    def __post_init__(self):  # (the trainers check their settings; this, a library caller's typo)
        assert self.attention in ("sdpa", "flex") and self.loss_path in ("chunked", "fused"), self
        assert self.attention == "sdpa" or self.dropout == 0, "FlexAttention has no dropout"


RUN_CHOICES = ("attention", "loss_path", "gradient_checkpointing")  # GPTConfig's per-run fields


def document_mask(positions: torch.Tensor, flex: bool = False) -> torch.Tensor | BlockMask:
    """Who may attend to whom in rows of packed examples: query q sees key k when k is at or before
    q and in q's own example, which began positions[q] tokens before q. Padding restarts its
    positions too, so it forms examples of its own and no row of the mask is empty (an empty one
    would make softmax 0/0 = NaN).

    The mask as booleans (B, 1, T, T), for scaled_dot_product_attention: the reference, on every
    device. flex=True: the same rule as a FlexAttention BlockMask, whose compiled kernel skips the
    blocks no query may see (it has no dropout, and on a CPU no backward).
    """
    B, T = positions.shape
    if flex:
        def same_example_causal(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx <= positions[b, q_idx])

        return create_block_mask(same_example_causal, B, None, T, T, device=positions.device)
    q = torch.arange(T, device=positions.device)
    key, query, first = q[None, None, :], q[None, :, None], (q - positions)[:, :, None]
    return ((key <= query) & (key >= first))[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k and v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, pos=0, mask=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None:
            # Generation: keep every key/value so far: each new token costs one position, not T.
            k_cache, v_cache = kv_cache
            k_cache[:, :, pos : pos + T] = k
            v_cache[:, :, pos : pos + T] = v
            k, v = k_cache[:, :, : pos + T], v_cache[:, :, : pos + T]
        # A single new token may attend to everything before it: no mask. Several need the causal
        # mask, and SDPA's is_causal is only right when they start at position 0 (the prefill).
        assert T == 1 or pos == 0, "multi-token steps with a KV cache must start at position 0"
        if isinstance(mask, BlockMask):  # packed examples, attention="flex"
            y = flex_attention(q, k, v, block_mask=mask)
        else:  # one sequence per row (mask None: causal), or packed examples (a boolean mask)
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=mask is None and T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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

    def forward(self, x, kv_cache=None, pos=0, mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, pos, mask)
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
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token and writing a token use the same vectors (GPT-2 does this;
        # it also saves vocab_size * n_embd parameters). One Parameter, two uses.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream: shrink its projection
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

    def hidden(self, idx, kv_cache=None, pos=0, positions=None):
        """The final hidden states (B, T, n_embd) of tokens idx. positions (B, T), for rows of
        packed examples, gives each token's position within its own example; without it the tokens
        sit at pos .. pos+T-1 (a single sequence, or generation with a KV cache)."""
        B, T = idx.size()
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos + T} is longer than "
                             f"block_size={self.config.block_size}")
        mask = None
        if positions is None:
            positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)
        else:
            mask = document_mask(positions, flex=self.config.attention == "flex")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        recompute = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            cache = None if kv_cache is None else kv_cache[i]
            if recompute:  # the backward pass runs the block again for its activations
                x = checkpoint(block, x, cache, pos, mask, use_reentrant=False)
            else:
                x = block(x, cache, pos, mask)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, positions=None):
        """Without targets: (logits (B, T, vocab_size), None). With targets: (None, loss), the mean
        cross-entropy over the positions whose target is not -100. positions: see hidden()."""
        h = self.hidden(idx, positions=positions)
        if targets is None:
            return self.lm_head(h), None
        fused = self.config.loss_path == "fused"
        return None, cross_entropy(h, self.lm_head.weight, targets, fused)

    # ---------------------------------------------------------------------------------------------
    # Loading GPT-2 (or any GPT-2-architecture checkpoint in Hugging Face's layout)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, vocab_size: int | None = None,
                        cache_dir: str | None = None, **settings) -> "GPT":
        """Load "gpt2" (-medium/-large/-xl), "distilgpt2", a hub repo "org/name", or a local
        directory in Hugging Face's layout. vocab_size larger than the checkpoint's grows the
        embedding (new rows at the mean of the pretrained ones), making room for the chat template's
        special tokens. settings: GPTConfig's other fields (dropout)."""
        import hf_checkpoint  # the checkpoint layout (and downloads): needed only here

        folder = hf_checkpoint.find(name_or_dir, cache_dir)
        args = hf_checkpoint.read_config(folder)
        ckpt_vocab = args["vocab_size"]  # (a smaller vocab_size: load_weights names the misfit)
        model = cls(GPTConfig(**(args | {"vocab_size": vocab_size or ckpt_vocab} | settings)))
        state = hf_checkpoint.read_state_dict(folder)
        hf_checkpoint.load_weights(model, state, ckpt_vocab, source=folder)
        return model

    # ---------------------------------------------------------------------------------------------
    # Training helpers

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        """AdamW, with weight decay on matrices (matmul weights, embeddings) only, never on biases
        or LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # The fused kernel: the whole update in one pass over every parameter, instead of a dozen
        fused = device_type in ("cpu", "cuda", "mps")
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    # ---------------------------------------------------------------------------------------------
    # Generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=(),
                 vocab_size=None, generator=None, on_token=None):
        """Continue each row of idx (B, T) by up to max_new_tokens tokens and return (B, T + n).

        temperature 0 is greedy. A row stops after it emits any of stop_tokens; afterwards it
        repeats that token while the other rows go on, and generation ends when every row has
        stopped, or when the context window (block_size) is full. vocab_size limits sampling to the
        tokenizer's ids, so rows of a padded embedding are never produced. on_token(next_ids) is
        called with each new (B,) column, for streaming.
        """
        was_training = self.training
        self.eval()
        max_new_tokens = min(max_new_tokens, self.config.block_size - idx.size(1))
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        # The KV cache keeps every key and value computed so far: the prompt is run once (the
        # prefill), then each new token costs one position instead of the whole sequence.
        end = idx.size(1) + max_new_tokens
        kv_cache = self._new_kv_cache(idx.size(0), end, idx.device)
        h = self.hidden(idx, kv_cache, 0)
        while idx.size(1) < end:
            logits = self.lm_head(h[:, -1, :]).float()  # the last position only: no (B, T, vocab)
            if vocab_size is not None:
                logits = logits[:, :vocab_size]
            next_ids = sample_next_token(logits, temperature, top_k, top_p, generator)
            next_ids = torch.where(done, idx[:, -1], next_ids)
            idx = torch.cat((idx, next_ids[:, None]), dim=1)
            if on_token is not None:
                on_token(next_ids)
            done |= torch.isin(next_ids, stop)
            if done.all() or idx.size(1) == end:
                break
            h = self.hidden(idx[:, -1:], kv_cache, idx.size(1) - 1)
        self.train(was_training)
        return idx

    def _new_kv_cache(self, batch_size, max_len, device):
        cfg = self.config
        shape = (batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        dtype = self.transformer.wte.weight.dtype
        return [(torch.empty(shape, dtype=dtype, device=device),
                 torch.empty(shape, dtype=dtype, device=device)) for _ in range(cfg.n_layer)]


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled (top-k/p)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probabilities add up to top_p (nucleus).
        sorted_logits, sorted_ids = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # (the most likely token always stays: the mass before it is 0)
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_ids, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# The loss


def cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  fused: bool = False) -> torch.Tensor:
    """The loss of both trainers: mean next-token cross-entropy of the logits h @ weight.T (the
    output layer) over the positions whose target is not -100. A batch with no targets gives 0.0
    (zero gradients), not the NaN of 0/0: a micro-batch can be all prompt in SFT, and one NaN would
    poison the whole update.

    fused=True is the one line below over every position, whose shapes are the batch's: what
    torch.compile fuses best (loss_path='fused'). Otherwise (loss_path='chunked', eager) the same
    sum runs only over positions with a target, a chunk of rows at a time (chunked_loss.py), so the
    logits of a whole batch never exist at once, and none for prompt and padding.
    """
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    has_target = targets != IGNORE_INDEX
    if fused:
        logits = (h @ weight.t()).float()
        loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        loss_sum = chunked_cross_entropy_sum(h[has_target], weight, targets[has_target])
    return loss_sum / has_target.sum().clamp(min=1)
