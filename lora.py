"""
LoRA (Hu et al. 2021, arXiv 2106.09685): fine-tune a few parameters beside frozen ones.

Each target Linear keeps its pretrained weight W frozen and learns a low-rank update beside it:

    y = x W^T + b + (alpha / rank) * x A^T B^T        A: (rank, in), B: (out, rank)

B starts at zero, so training starts exactly at the pretrained model; A starts like a Linear's weight. Only A
and B get gradients, so the optimizer keeps two moments for them alone: for GPT-2 XL at rank 8, about 10M
numbers instead of 1.5B. merge_lora folds B A into W afterwards, leaving a plain GPT.

One more thing must learn: the rows of the tied embedding/output matrix for tokens past GPT-2's vocabulary
(the chat template's <|im_start|>, <|im_end|>). No base model has learned them (GPT-2's grown rows are all the
same mean vector), and frozen they would stay equal: the model could never tell "end the answer" from "start
a turn". So those few rows (vocab_size - 50257 of them) stay trainable, as peft's trainable_token_indices does.

    model = GPT.from_pretrained("gpt2-xl", vocab_size=50304)
    apply_lora(model, rank=8, alpha=16, targets="c_attn,c_proj,c_fc")   # freezes everything else
    ... train ...
    merge_lora(model)                                                    # a plain GPT again
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from chat_template import IM_START, SPECIAL_TOKENS
from errors import UserError

FIRST_NEW_TOKEN = SPECIAL_TOKENS[IM_START]  # GPT-2's tokens end at <|endoftext|>; the chat tokens follow
LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the Linear layers of a Block


class LoRALinear(nn.Linear):
    """A Linear with its weight and bias frozen, plus the trainable low-rank update (alpha / rank) B A.
    It keeps the Linear's weight and bias under their own names, so a checkpoint's keys stay readable."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # not nn.Linear's __init__: the weight and bias are the linear's own
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.dropout.p > 0:  # (dropout at p = 0 would still copy x, and keep the copy for the backward pass)
            x = self.dropout(x)
        # Added in place, scale included: no output-sized temporaries (the frozen matmul's output is not kept
        # for the backward pass, so overwriting it is safe).
        return out.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scale)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class NewTokenRows(nn.Module):
    """A parametrization of the tied embedding/output weight: its rows up to FIRST_NEW_TOKEN come from the
    frozen weight, the rows after it from a trainable copy of them."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.rows = nn.Parameter(weight[FIRST_NEW_TOKEN:].detach().clone())

    def forward(self, weight):
        return torch.cat([weight[:FIRST_NEW_TOKEN], self.rows])


def parse_targets(targets: str) -> list[str]:
    """'c_attn,c_proj,c_fc' -> the block layers it names. A name is a layer's (c_attn, c_fc), or its path in
    the block (attn.c_proj, mlp.c_proj); c_proj names both projections. Unknown names are a UserError."""
    valid = f"valid names: {', '.join(LAYERS)}, or c_attn, c_proj (both projections), c_fc"
    names = [t.strip() for t in targets.split(",") if t.strip()]
    if not names:
        raise UserError(f"lora_targets={targets!r} names no layer; {valid}")
    chosen = set()
    for name in names:
        matches = {layer for layer in LAYERS if layer == name or layer.endswith("." + name)}
        if not matches:
            raise UserError(f"lora_targets: unknown layer {name!r}; {valid}")
        chosen |= matches
    return [layer for layer in LAYERS if layer in chosen]  # in the block's order


def check_settings(rank: int, alpha: float, targets: str, dropout: float) -> list[str]:
    """The target layers, once the settings are known to be usable; a UserError with the fix if not. The
    trainers call it before a model of gigabytes loads."""
    if not (isinstance(rank, int) and rank > 0):
        raise UserError(f"lora_rank={rank}: give a positive rank such as 8 (or 0 for no LoRA: train every "
                        f"weight)")
    if not alpha > 0:
        raise UserError(f"lora_alpha={alpha}: give a positive scale such as 16 (the update is alpha / rank * "
                        f"B A)")
    if not 0 <= dropout < 1:
        raise UserError(f"lora_dropout={dropout}: give a probability in [0, 1)")
    return parse_targets(targets)


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: str = "c_attn,c_proj,c_fc",
               dropout: float = 0.0) -> nn.Module:
    """Freeze every parameter of model (a GPT), then add LoRA adapters to the target layers of every block and
    make the new tokens' rows trainable (see the module docstring). Weight tying is kept. Returns model."""
    layers = check_settings(rank, alpha, targets, dropout)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters: merge_lora it first, or keep training these")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        for layer in layers:
            parent_name, name = layer.split(".")
            parent = getattr(block, parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    if model.config.vocab_size > FIRST_NEW_TOKEN:
        rows = NewTokenRows(model.transformer.wte.weight)
        # One parametrization on both uses of the tied weight: the same frozen tensor, the same trainable rows.
        # (unsafe: skip the trial call that checks the result's shape, two copies of the whole matrix; it is
        # the weight's own shape by construction)
        parametrize.register_parametrization(model.transformer.wte, "weight", rows, unsafe=True)
        parametrize.register_parametrization(model.lm_head, "weight", rows, unsafe=True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W + alpha / rank * B A) and the trained rows into the embedding:
    model becomes a plain GPT again, with the same outputs. Returns model."""
    for block in model.transformer.h:
        for layer in LAYERS:
            parent_name, name = layer.split(".")
            parent = getattr(block, parent_name)
            if isinstance(getattr(parent, name), LoRALinear):
                setattr(parent, name, getattr(parent, name).merged())
    if parametrize.is_parametrized(model.transformer.wte, "weight"):
        parametrize.remove_parametrizations(model.transformer.wte, "weight", leave_parametrized=True)
        parametrize.remove_parametrizations(model.lm_head, "weight", leave_parametrized=False)
        model.lm_head.weight = model.transformer.wte.weight  # tied again: one Parameter, two uses
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def weight_counts(model: nn.Module) -> dict:
    """{"trainable": weights the optimizer updates, "total": all of them} (a tied matrix counts once)."""
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def trainable_summary(model: nn.Module) -> str:
    """What the optimizer will update: 'training every weight', or with LoRA (GPT-2 124M, rank 8) 'LoRA:
    training 1,215,744 weights (adapters and the chat tokens' rows), 0.97% of all weights'."""
    counts = weight_counts(model)
    if counts["trainable"] == counts["total"]:
        return "training every weight"
    what = "adapters and the chat tokens' rows" if model.config.vocab_size > FIRST_NEW_TOKEN else "adapters"
    share = counts["trainable"] / counts["total"]
    return f"LoRA: training {counts['trainable']:,} weights ({what}), {share:.2%} of all weights"
