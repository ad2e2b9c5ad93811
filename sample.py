"""
Talk to a model: GPT-2 as published, or one of our checkpoints, before and after SFT.

    python sample.py --init_from=gpt2 --template=none --prompt "The capital of France is"
    python sample.py --ckpt=out/gpt2_alpaca --prompt "Write a haiku about machine learning."
    python sample.py --ckpt=out/gpt2_alpaca --compare --prompt "Write a haiku about machine learning."
    python sample.py --ckpt=out/gpt2_alpaca --chat
    python sample.py --ckpt=out/gpt2_alpaca --compare --prompts_from=data/alpaca/val   # 20 held-out questions
    python sample.py --ckpt=out/tiny_alpaca --compare --eval_text=data/shakespeare/val.bin

A checkpoint of ours knows its chat template and system prompt (they come from the prepared data's
meta.json), so it needs no flags; --template overrides it (`none` = plain text completion). --compare puts
the base model the checkpoint was fine-tuned from (its init_from, or --init_from) next to it: same prompts,
same seed, one above the other.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

import checkpoint
import common
import data
import errors
from chat_template import EOT, SPECIAL_TOKENS, TEMPLATES, encode_prompt, end_token, get_tokenizer
from errors import UserError
from model import GPT


@dataclass
class Loaded:
    model: GPT
    meta: dict  # the template and system prompt it was trained with, and what it was fine-tuned from
    label: str  # how the output names it


def load(source: str, device: str, dtype: torch.dtype, role: str = "") -> Loaded:
    """Our checkpoint (a .pt file or a folder with ckpt.pt), or a GPT-2 name / folder in HF's layout. Weights in
    dtype: generating a token reads every weight once, so bf16 weights (half the bytes) are the speed; nothing
    is learned here, so nothing needs fp32."""
    model, meta = checkpoint.load_model(source, device, dtype)
    return Loaded(model, meta, f"{role} ({source})" if role else source)


def local_checkpoint(source: str) -> str:
    """--ckpt names a checkpoint on this machine, never a hub repo: a folder with our ckpt.pt, a .pt file, or
    a folder in Hugging Face's layout (config.json). A typo must not turn into a download."""
    if checkpoint.checkpoint_path(source) is None and not os.path.isfile(os.path.join(source, "config.json")):
        what = "the file does not exist" if source.endswith(".pt") else (
            "the folder holds neither ckpt.pt nor config.json" if os.path.isdir(source) else "it does not exist")
        raise UserError(f"--ckpt={source}: no such checkpoint ({what}); --ckpt takes a folder with ckpt.pt "
                        f"(a training run's out_dir), a .pt file, or a folder with config.json and "
                        f"model.safetensors. For GPT-2 from the hub, use --init_from=gpt2")
    return source


def prompt_ids(messages: list[dict], template: str) -> list[int]:
    """What the model continues: the template's prompt, or for template 'none' the bare text."""
    if template == "none":
        return get_tokenizer().encode_ordinary("\n".join(m["content"] for m in messages if m["role"] != "system"))
    return encode_prompt(messages, template)


def fit_history(history: list[dict], template: str, max_prompt_tokens: int) -> list[int]:
    """The conversation as a prompt, dropping the oldest exchanges (never the system prompt) until it fits."""
    history = list(history)
    has_system = history[0]["role"] == "system"
    while True:
        ids = prompt_ids(history, template)
        if len(ids) <= max_prompt_tokens or len(history) <= 1 + has_system:
            return ids
        del history[has_system : has_system + 2]  # the oldest user/assistant pair


def respond(model, ids: list[int], template: str, args, device: str, stream: bool) -> tuple[list[int], str]:
    """Generate one response: its token ids (without the end token) and how it ended: 'end token', or why not."""
    enc = get_tokenizer()
    stop = {SPECIAL_TOKENS[EOT]} | ({end_token(template)} if template != "none" else set())
    room = model.config.block_size - len(ids)
    if room <= 0:
        raise UserError(f"the prompt has {len(ids)} tokens; the model's context is {model.config.block_size}")
    new = []
    printed = ""

    def on_token(next_ids):
        nonlocal printed
        new.append(int(next_ids[0]))
        if stream and new[-1] not in stop:
            text = enc.decode([t for t in new if t not in stop])
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                print(text[len(printed) :], end="", flush=True)
                printed = text

    x = torch.tensor([ids], dtype=torch.long, device=device)
    model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   stop_tokens=tuple(stop), vocab_size=enc.n_vocab, on_token=on_token)
    if stream:
        print()
    if new and new[-1] in stop:
        return new[:-1], "end token"
    if len(new) < args.max_new_tokens:
        return new, f"no end token: the context window ({model.config.block_size} tokens) is full"
    return new, f"no end token within --max_new_tokens={args.max_new_tokens}"


@torch.no_grad()
def text_loss(model, path: str, device: str, max_tokens: int) -> tuple[float, int]:
    """Mean next-token loss on a plain-text corpus (.bin of token ids from prepare_text.py, or a text file)."""
    if path.endswith(".bin"):  # prepare_text.py's token file, checked against its meta.json
        tokens = data.read_token_file(path)[: max_tokens + 1].astype(np.int64)
    else:
        with open(path, encoding="utf-8") as f:
            tokens = np.array(get_tokenizer().encode_ordinary(f.read())[: max_tokens + 1], dtype=np.int64)
    T = model.config.block_size
    loss_sum, n = 0.0, 0
    for start in range(0, len(tokens) - 1, T):  # back-to-back windows, each a fresh context
        window = torch.from_numpy(tokens[start : start + T + 1]).to(device)
        _, loss = model(window[None, :-1], window[None, 1:])
        loss_sum += loss.item() * (len(window) - 1)
        n += len(window) - 1
    return loss_sum / max(n, 1), n


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    if args.prompts_from is not None:  # data/alpaca/val: the folder, then the split
        data_dir, split = os.path.split(os.path.normpath(args.prompts_from))
        if split not in ("train", "val"):
            raise UserError(f"--prompts_from={args.prompts_from}: name a prepared folder and a split, "
                            f"e.g. data/alpaca/val")
        return data.read_prompts(data_dir, split)[: args.num_prompts]
    if args.prompts_file is None:
        return []
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"--prompts_file={args.prompts_file}: {e.strerror}") from None
    if not args.prompts_file.endswith(".json"):
        return [line for line in text.splitlines() if line.strip()]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--prompts_file={args.prompts_file}: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise UserError(f"--prompts_file={args.prompts_file}: expected a JSON list of strings or records")
    prompts = []
    for i, item in enumerate(items):  # strings, or Alpaca-style records
        if isinstance(item, dict) and isinstance(item.get("instruction"), str):
            extra = item.get("input") or ""
            prompts.append(item["instruction"] + ("\n\n" + extra if extra.strip() else ""))
        elif isinstance(item, str):
            prompts.append(item)
        else:
            raise UserError(f"{args.prompts_file}: item {i} is neither a string nor an object with 'instruction'")
    return prompts


def check_settings(args) -> None:
    """Sampling settings are checked where they enter: a bad one is a clear line, not a crash deep in torch."""
    if args.temperature < 0:
        raise UserError(f"--temperature={args.temperature}: must be >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top_k={args.top_k}: must be >= 1 (or leave it out)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top_p={args.top_p}: must be in (0, 1] (1 = off)")
    if args.max_new_tokens < 1:
        raise UserError(f"--max_new_tokens={args.max_new_tokens}: must be >= 1")
    if args.prompt is not None and not args.prompt.strip():
        raise UserError("--prompt is empty: give the text to answer")


def report_text_loss(models: list[Loaded], args, device: str) -> None:
    """--eval_text: each model's loss on a text corpus, and what fine-tuning changed (the forgetting)."""
    losses = []
    for m in models:
        loss, n = text_loss(m.model, args.eval_text, device, args.eval_tokens)
        losses.append(loss)
        print(f"loss on {args.eval_text} ({n:,} tokens), {m.label}: {loss:.4f} (perplexity {math.exp(loss):.1f})")
    if len(losses) == 2:
        base, tuned = losses
        print(f"fine-tuning changed this loss by {tuned - base:+.4f} ({(tuned - base) / base:+.1%})")


def chat(m: Loaded, template: str, system: list[dict], args, device: str) -> None:
    """--chat: a conversation on stdin, the oldest exchanges dropped when the context runs out."""
    print(f"chatting with {m.label}; an empty line or Ctrl-D ends")
    history = list(system)
    torch.manual_seed(args.seed)
    for line in sys.stdin:
        if not line.strip():
            break
        history.append({"role": "user", "content": line.rstrip("\n")})
        if not sys.stdin.isatty():  # piped in: show the questions too, so the output reads as a conversation
            print(f"user: {history[-1]['content']}")
        # keep at least half the context for the conversation so far, however long the answers may be
        room = m.model.config.block_size - min(args.max_new_tokens, m.model.config.block_size // 2)
        ids = fit_history(history, template, room)
        print("assistant: ", end="", flush=True)
        new, ending = respond(m.model, ids, template, args, device, stream=True)
        if ending != "end token":  # a turn that did not end by itself is worth seeing
            print(f"[{ending}]")
        history.append({"role": "assistant", "content": get_tokenizer().decode(new).strip()})


def answer_prompts(models: list[Loaded], prompts: list[str], template: str, system: list[dict], args,
                   device: str) -> None:
    """Every prompt to every model, one above the other, with the same seed; --out writes them as JSONL."""
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    settings = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "seed", "max_new_tokens")}
    for i, prompt in enumerate(prompts):
        print(f"\n=== prompt {i + 1}: {prompt}")
        ids = prompt_ids(system + [{"role": "user", "content": prompt}], template)
        for m in models:
            torch.manual_seed(args.seed)  # the same seed for every model: differences come from the weights
            for k in range(args.num_samples):
                print(f"--- {m.label}" + (f", sample {k + 1}" if args.num_samples > 1 else "") + " ---")
                new, ending = respond(m.model, ids, template, args, device, stream=True)
                if ending != "end token":
                    print(f"[{ending}]")
                if out:
                    out.write(json.dumps({"prompt": prompt, "model": m.label, "template": template,
                                          "system_prompt": system[0]["content"] if system else None,
                                          "settings": settings, "sample": k,
                                          "response": get_tokenizer().decode(new).strip(),
                                          "stopped": ending == "end token", "n_tokens": len(new)}) + "\n")
    if out:
        out.close()
        print(f"\nwrote {args.out}")


def main(argv=None):
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="our checkpoint: a folder with ckpt.pt (e.g. out/gpt2_alpaca) or a .pt file")
    p.add_argument("--init_from", help="a GPT-2 name or HF folder; with --compare, the base model")
    p.add_argument("--compare", action="store_true", help="run the base model and --ckpt side by side")
    p.add_argument("--template", choices=[*TEMPLATES, "none"], help="override the checkpoint's template")
    p.add_argument("--system_prompt", help="override the checkpoint's system prompt")
    p.add_argument("--prompt", help="one prompt")
    p.add_argument("--prompts_file", help="a text file (one prompt per line) or a JSON list")
    p.add_argument("--prompts_from", help="the user turns of a prepared split, e.g. data/alpaca/val")
    p.add_argument("--num_prompts", type=int, default=20, help="with --prompts_from: the first this many")
    p.add_argument("--chat", action="store_true", help="an interactive conversation (reads stdin)")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", help="write every sample to this JSONL file")
    p.add_argument("--eval_text", help="report each model's loss on this text corpus (.bin or .txt)")
    p.add_argument("--eval_tokens", type=int, default=32768, help="at most this many tokens of --eval_text")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", *common.DTYPES],
                   help="the weights' precision; auto = bf16 where the hardware has it, else fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = the cores idle at the start")
    args = p.parse_args(argv)
    if not args.ckpt and not args.init_from:
        raise UserError("give --ckpt (our checkpoint) or --init_from (a GPT-2 name or folder)")
    check_settings(args)
    prompts = read_prompts(args)
    if not prompts and not args.eval_text and not args.chat:
        raise UserError("nothing to do: give --prompt, --prompts_file, --prompts_from, --chat or --eval_text")

    torch.set_num_threads(common.pick_threads(args.threads))
    device = common.pick_device(args.device)
    dtype = common.DTYPES[common.pick_dtype(args.dtype, common.device_type(device))]
    # The models: the fine-tuned one last. A checkpoint also tells us which model it was fine-tuned from.
    models = [load(local_checkpoint(args.ckpt), device, dtype, "fine-tuned")] if args.ckpt else []
    if args.compare or not args.ckpt:  # the base: what the checkpoint's run began from, or --init_from
        base = args.init_from or (models[0].meta["base_model"] if models else None)
        if not base or base == "scratch":
            raise UserError("--compare needs the base model: the run began from scratch (random weights); "
                            "pass --init_from=gpt2 (or a folder/checkpoint)")
        models.insert(0, load(base, device, dtype, "base"))
    template = args.template or models[-1].meta["template"]
    system_prompt = args.system_prompt if args.system_prompt is not None else models[-1].meta.get("system_prompt")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    print(f"template: {template}, weights in {str(dtype).removeprefix('torch.')}"
          + (f", system prompt: {system_prompt!r}" if system_prompt else ""))

    if args.eval_text:
        report_text_loss(models, args, device)
    if args.chat:
        chat(models[-1], template, system, args, device)
    else:
        answer_prompts(models, prompts, template, system, args, device)


if __name__ == "__main__":
    errors.report_user_errors()
    main()
