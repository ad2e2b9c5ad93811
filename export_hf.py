"""
Export a checkpoint of ours to Hugging Face's GPT-2 layout, so `transformers` (and everything built on it) can
load it, chat with it and generate from it:

    python export_hf.py --ckpt=out/tiny_alpaca --out=out/tiny_alpaca_hf          # --force to overwrite

--ckpt takes what `sample.py --ckpt` takes: a folder holding ckpt.pt, or a .pt file. The export folder holds

    config.json              GPT2LMHeadModel's config (model_type gpt2)
    model.safetensors        the weights, named and shaped like Hugging Face's (the tied matrix stored once)
    generation_config.json   eos_token_id: the template's end token and <|endoftext|>, where sample.py stops
    vocab.json, merges.txt   GPT-2's BPE, derived from tiktoken (the tokenizer our data was encoded with)
    tokenizer_config.json    <|im_start|>/<|im_end|> as special tokens 50257/50258, and the chat template as
                             Jinja, with the system prompt the model was trained with as its default

Only the tokenizer's 50259 rows of our (padded) 50304-row embedding are exported, and vocab_size=50259: a
padding row can then never be generated, exactly as sample.py limits sampling to the tokenizer's ids.
The folder appears whole or not at all: it is written beside --out under a temporary name, then renamed.
This file needs no `transformers`; the tests check the export with it (tests/test_export.py).

Where transformers' tokens can differ from chat_template.py's: chat_template.py encodes a conversation piece by
piece, message text always as plain text; transformers renders the whole text and tokenizes it in one go,
special tokens included. So a "<|im_end|>" typed inside a message becomes the special token; whitespace where
a message meets template text can merge differently (a message starting with two spaces, say). Neither occurs
in the tests' sample of real Alpaca records, where the ids are identical in all three templates, multi-turn
conversations included.
"""

import argparse
import functools
import json
import os
import shutil
import tempfile

import torch
import torch.nn as nn
from safetensors.torch import save_file

import chat_template
import checkpoint
import errors
from chat_template import EOT, IM_END, IM_START, SPECIAL_TOKENS, jinja_template
from errors import UserError
from hf_checkpoint import CONV1D_WEIGHTS  # the weights HF stores transposed: the list that loading transposes


def checkpoint_file(ckpt: str) -> str:
    """The ckpt.pt behind --ckpt, resolved as sample.py does (a .pt file, or a folder holding ckpt.pt)."""
    path = checkpoint.checkpoint_path(ckpt)
    if path is None:
        raise UserError(f"--ckpt={ckpt}: no checkpoint there; give a training out_dir holding ckpt.pt "
                        f"(e.g. out/tiny_alpaca) or a .pt file")
    return path


# ----------------------------------------------------------------------------------------------------------
# Weights and configs


def hf_state_dict(model, n_vocab: int) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face's names: Conv1D weights transposed back, the embedding cut to n_vocab
    rows. lm_head.weight is left out: it is the embedding (tied), and HF re-ties it on load, as it does with
    its own checkpoints. A model trained with bias=False gets zero biases, which compute exactly the same."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "transformer.wte.weight":
            tensor = tensor[:n_vocab]
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[name] = tensor.detach().to(torch.float32).contiguous().clone()  # safetensors wants owned storage
    if not model.config.bias:  # HF's GPT-2 always has biases
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.LayerNorm) and module.bias is None and name != "lm_head":
                state[f"{name}.bias"] = torch.zeros(module.weight.shape[0])
    return state


def hf_config(model_config, n_vocab: int, eos_ids: list[int]) -> dict:
    """GPT2LMHeadModel's config.json for our GPTConfig. Dropout is 0: the export is for inference."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": n_vocab,
        "n_positions": model_config.block_size,
        "n_embd": model_config.n_embd,
        "n_layer": model_config.n_layer,
        "n_head": model_config.n_head,
        "n_inner": None,  # 4 * n_embd, like ours
        "activation_function": "gelu_new",  # GELU with the tanh approximation, like ours
        "layer_norm_epsilon": model_config.layer_norm_epsilon,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": SPECIAL_TOKENS[EOT],
        "eos_token_id": eos_ids[0],
        "use_cache": True,
        "torch_dtype": "float32",
    }


def generation_config(eos_ids: list[int]) -> dict:
    # pad_token_id: GPT-2 has no padding token; a finished row of a batch repeats its end token (as sample.py's
    # generate does), and naming it here spares a warning on every generate() call.
    return {"bos_token_id": SPECIAL_TOKENS[EOT], "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
            "pad_token_id": eos_ids[0]}


# ----------------------------------------------------------------------------------------------------------
# The tokenizer: GPT-2's BPE files, recovered from tiktoken


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from bytes to printable characters (openai/gpt-2 encoder.py): vocab.json and merges.txt
    spell every token's bytes with these characters, so that no byte is whitespace or a control character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair-merge token using only merges ranked below max_rank (lowest rank first, as BPE does)."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            return parts
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


@functools.cache  # 1 s of pure Python: once per process is enough
def bpe_files(enc) -> tuple[dict[str, int], list[str]]:
    """vocab.json's {token: id} and merges.txt's lines from a tiktoken Encoding.

    tiktoken keeps only bytes -> rank; a token of rank r was made by the merge of rank r. Which two parts it
    merged is what BPE gives when it may use only the merges before r: exactly two parts.
    """
    ranks = enc._mergeable_ranks
    table = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return b.decode("latin-1").translate(table)  # latin-1: character i is byte i, then one table look-up

    vocab = {spell(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab[EOT] = SPECIAL_TOKENS[EOT]  # GPT-2's vocab.json lists its one special token; ours follow as added tokens
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue  # the 256 single bytes are the alphabet, not merges
        parts = bpe_split(ranks, token, rank)
        assert len(parts) == 2, f"token {token!r} (rank {rank}) is not the merge of two earlier tokens"
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    return vocab, merges


def tokenizer_config(template: str, system_prompt: str | None, end_token: str, block_size: int) -> dict:
    special = {str(i): {"content": s, "special": True, "normalized": False, "lstrip": False, "rstrip": False,
                        "single_word": False} for s, i in SPECIAL_TOKENS.items()}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "add_bos_token": False,  # our prompts start with the template's text, no <|endoftext|> in front
        "bos_token": EOT,
        "eos_token": end_token,
        "unk_token": EOT,
        "pad_token": EOT,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,  # decode must give back the text as it was, " ." included
        "model_max_length": block_size,
        "added_tokens_decoder": special,
        "additional_special_tokens": [IM_START, IM_END],
    }
    if template != "none":
        config["chat_template"] = jinja_template(template, system_prompt)
    return config


# ----------------------------------------------------------------------------------------------------------
# Writing the folder


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def check_out(out: str, force: bool) -> None:
    if os.path.exists(out) and not force and not (os.path.isdir(out) and not os.listdir(out)):
        raise UserError(f"--out={out} already exists and is not empty; pass --force to replace it, "
                        f"or choose another --out")


def export(ckpt: str, out: str, force: bool = False) -> dict:
    """Write the export of checkpoint ckpt into folder out. Returns a summary (for main's printout)."""
    ckpt_file = os.path.realpath(checkpoint_file(ckpt))  # realpath: a symlinked --out must not slip past
    if os.path.commonpath([ckpt_file, os.path.realpath(out)]) == os.path.realpath(out):
        raise UserError(f"--out={out} holds the checkpoint {ckpt_file}: --force would delete it; "
                        f"choose another --out (e.g. {out.rstrip('/')}_hf)")
    check_out(out, force)  # both checks before the (slow) load, and again before the rename
    model, meta = checkpoint.load_model(ckpt_file)
    enc = chat_template.get_tokenizer()
    n_vocab = enc.n_vocab  # 50259: GPT-2's 50257 and the two chat tokens
    if model.config.vocab_size < n_vocab:
        raise UserError(f"--ckpt={ckpt}: the model has {model.config.vocab_size} token rows, fewer than the "
                        f"tokenizer's {n_vocab}; it cannot be exported with this tokenizer")
    template = meta.get("template", "none")
    end = SPECIAL_TOKENS[EOT] if template == "none" else chat_template.end_token(template)
    # Stop where sample.py stops: at the template's end token, and at <|endoftext|> (which it always stops at).
    eos_ids = [end] + ([SPECIAL_TOKENS[EOT]] if end != SPECIAL_TOKENS[EOT] else [])
    vocab, merges = bpe_files(enc)

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
    try:
        save_file(hf_state_dict(model, n_vocab), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        write_json(os.path.join(tmp, "config.json"), hf_config(model.config, n_vocab, eos_ids))
        write_json(os.path.join(tmp, "generation_config.json"), generation_config(eos_ids))
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)  # the format of GPT-2's own vocab.json (encoder.json)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
        end_name = {v: k for k, v in SPECIAL_TOKENS.items()}[end]
        write_json(os.path.join(tmp, "tokenizer_config.json"),
                   tokenizer_config(template, meta.get("system_prompt"), end_name, model.config.block_size))
        # mkdtemp made the folder private (0700) and safetensors its file too: give them the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        # Into place. An old export (with --force) is moved aside first and deleted only once the new one is in.
        check_out(out, force)
        old = None
        if os.path.lexists(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.old-", dir=parent)
            os.replace(out, os.path.join(old, "previous"))
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:  # put the previous export back where it was
                os.replace(os.path.join(old, "previous"), out)
                os.rmdir(old)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {"template": template, "system_prompt": meta.get("system_prompt"), "vocab_size": n_vocab,
            "eos_token_id": eos_ids}


def main(argv=None) -> None:
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our checkpoint: a folder with ckpt.pt, or a .pt file")
    p.add_argument("--out", required=True, help="the export folder to create (Hugging Face's layout)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    summary = export(args.ckpt, args.out, args.force)
    print(f"wrote {args.out}/ (template {summary['template']}, vocab_size {summary['vocab_size']}, "
          f"eos_token_id {summary['eos_token_id']}"
          + (f", system prompt {summary['system_prompt']!r}" if summary["system_prompt"] else "") + ")")
    print(f"load it with transformers: AutoModelForCausalLM.from_pretrained({args.out!r}), "
          f"AutoTokenizer.from_pretrained({args.out!r})")


if __name__ == "__main__":
    errors.report_user_errors()
    main()
