"""
Chat templates: how a conversation becomes token ids, and which of those ids the model learns to
predict.

A template wraps each turn in markers so the model can tell who is speaking and, above all, where
its own answer ends. ChatML (the default) looks like this:

    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant
    Paris.<|im_end|>

`encode` returns the ids and a loss mask: mask[i] == 1 exactly where ids[i] is a training target.
Targets are the assistant's content and its closing end token (so the model learns to stop); the
system and user turns, the role headers and the newlines between turns are context only. The markers
are special tokens added to GPT-2's vocabulary (<|im_start|> = 50257, <|im_end|> = 50258) and are
inserted by id. Message content is encoded as plain text, so a literal "<|im_end|>" typed by a user
is just ordinary characters: data can never close a turn or forge one.

Run `python chat_template.py` to see a two-exchange conversation with its targets coloured.
"""

import functools
import hashlib
import json
import os
import shutil
import sys

import tiktoken

import errors

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = {EOT: 50256, IM_START: 50257, IM_END: 50258}  # GPT-2 has 0..50256; ours follow on
TEMPLATES = ("chatml", "alpaca", "llama2")
ROLES = ("system", "user", "assistant")

# Stanford Alpaca's preamble (their no-input prompt); a system message replaces it.
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


# Offline, tiktoken finds GPT-2's two BPE files in $TIKTOKEN_CACHE_DIR named by their URL's SHA-1
BPE_CACHE_NAMES = {"vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
                   "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"}


def fill_tiktoken_cache(bpe_dir: str, cache_dir: str) -> None:
    """Copy vocab.bpe and encoder.json from bpe_dir into cache_dir, named as tiktoken wants them."""
    os.makedirs(cache_dir, exist_ok=True)
    for name, cached in BPE_CACHE_NAMES.items():
        if not os.path.exists(os.path.join(cache_dir, cached)):
            shutil.copy(os.path.join(bpe_dir, name), os.path.join(cache_dir, cached))


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's BPE plus the chat special tokens, extended the way tiktoken's README documents."""
    try:
        gpt2 = tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken downloads its files on first use: offline that fails
        raise errors.UserError(
            f"tiktoken could not load the GPT-2 BPE files ({type(e).__name__}). Offline, pre-fill "
            "its cache: see 'Offline use' in docs/GUIDE.md (TIKTOKEN_CACHE_DIR)."
        ) from e
    return tiktoken.Encoding(
        name="gpt2_chat",
        pat_str=gpt2._pat_str,
        mergeable_ranks=gpt2._mergeable_ranks,
        special_tokens=SPECIAL_TOKENS,
    )


def end_token(template: str) -> int:
    """The id that closes an assistant turn: what generation stops at."""
    _check_template(template)
    return SPECIAL_TOKENS[IM_END] if template == "chatml" else SPECIAL_TOKENS[EOT]


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, "
                         f"got {messages!r:.80}")
    for i, m in enumerate(messages):
        well_formed = (isinstance(m, dict) and m.get("role") in ROLES
                       and isinstance(m.get("content"), str))
        if not well_formed:
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, "
                             f"got {m!r:.80}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")


def _segments(messages, template, add_generation_prompt=False):
    """The conversation as a list of (piece, is_target): piece is plain text or a special token's
    id."""
    _check_template(template)
    _check_messages(messages)
    eot, im_start, im_end = SPECIAL_TOKENS[EOT], SPECIAL_TOKENS[IM_START], SPECIAL_TOKENS[IM_END]
    out = []
    if template == "chatml":
        for m in messages:
            is_assistant = m["role"] == "assistant"
            out += [(im_start, False), (m["role"] + "\n", False), (m["content"], is_assistant),
                    (im_end, is_assistant), ("\n", False)]
        if add_generation_prompt:
            out += [(im_start, False), ("assistant\n", False)]
    elif template == "alpaca":
        # Below is an instruction...\n\n### Instruction:\n{user}
        # \n\n### Response:\n{assistant}<|endoftext|>
        system = messages[0]["content"] if messages[0]["role"] == "system" else ALPACA_PREAMBLE
        out.append((system, False))
        for m in messages:
            if m["role"] == "user":
                out.append(("\n\n### Instruction:\n" + m["content"], False))
            elif m["role"] == "assistant":
                out += [("\n\n### Response:\n", False), (m["content"], True), (eot, True)]
        if add_generation_prompt:
            out.append(("\n\n### Response:\n", False))
    else:  # llama2: [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant}<|endoftext|>
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        first_user = True
        for m in messages:
            if m["role"] == "user":
                sys_block = (f"<<SYS>>\n{system}\n<</SYS>>\n\n"
                             if system is not None and first_user else "")
                out.append((f"[INST] {sys_block}{m['content']} [/INST]", False))
                first_user = False
            elif m["role"] == "assistant":
                # The space after [/INST] opens the answer, the way GPT-2's BPE writes a word
                # (" Paris", one token), rather than a lone " " at the end of the prompt and
                # "Paris" after it.
                out += [(" " + m["content"], True), (eot, True)]
    return out


def fingerprint(template: str) -> str:
    """A short hash of how this file renders a fixed two-turn conversation in template (with and
    without its system message, and as a prompt): its pieces, which are targets, and the template's
    Jinja rendering.
    prepare_alpaca.py records it in meta.json and the trainer compares it, so data that an older
    version of a template rendered differently is never trained on as if it were the current one."""
    probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
             {"role": "assistant", "content": "A2"}]
    # with its system message, without (alpaca's default preamble), and as a prompt for generation
    conversations = [(probe, False), (probe[1:], False), (probe[1:-1], True)]
    pieces = [_segments(c, template, add_generation_prompt=prompt) for c, prompt in conversations]
    jinja = [jinja_template(template, system) for system in (None, "S")]  # the export's rendering
    return hashlib.sha256(json.dumps([pieces, jinja]).encode()).hexdigest()[:12]


def render(messages, template: str = "chatml", add_generation_prompt: bool = False) -> str:
    """The conversation as text, special tokens written out."""
    id_to_special = {v: k for k, v in SPECIAL_TOKENS.items()}
    segs = _segments(messages, template, add_generation_prompt)
    return "".join(id_to_special[p] if isinstance(p, int) else p for p, _ in segs)


def encode(messages, template: str = "chatml",
           train_on_prompt: bool = False) -> tuple[list[int], list[int]]:
    """ids and loss mask (1 where ids[i] is a training target). train_on_prompt=True makes every
    token a target."""
    segments = _segments(messages, template)  # validates first: a bad call needs no tokenizer files
    enc = get_tokenizer()
    ids, mask = [], []
    for piece, is_target in segments:
        # (data stays plain text: a "<|im_end|>" typed in a message is just characters)
        piece_ids = [piece] if isinstance(piece, int) else enc.encode_ordinary(piece)
        ids += piece_ids
        mask += [1 if (is_target or train_on_prompt) else 0] * len(piece_ids)
    return ids, mask


def encode_prompt(messages, template: str = "chatml") -> list[int]:
    """Everything up to and including the assistant header: what the model continues at
    inference time.

    Built from the same pieces as encode, so it is exactly the prefix the model saw in training.
    """
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        raise ValueError("encode_prompt: the last message is the assistant's; the prompt should "
                         "end with the user")
    segments = _segments(messages, template, add_generation_prompt=True)  # validates first
    enc = get_tokenizer()
    ids = []
    for piece, _ in segments:
        ids += [piece] if isinstance(piece, int) else enc.encode_ordinary(piece)
    return ids


def show_mask(ids, mask, color: bool = True) -> str:
    """The loss-masking picture: context tokens dimmed, target tokens green and underlined."""
    enc = get_tokenizer()
    out = []
    for i, m in zip(ids, mask, strict=True):
        text = enc.decode([i]).replace("\n", "\\n\n")
        if color:
            out.append(f"\033[4;32m{text}\033[0m" if m else f"\033[2m{text}\033[0m")
        else:
            out.append(f"[{text}]" if m else text)
    return "".join(out)


# ------------------------------------------------------------------------------------------------
# The same templates in Jinja, for transformers' apply_chat_template (export_hf.py writes them into
# an export's tokenizer_config.json). They must render what _segments renders: tests/test_export.py
# compares them on real records, and the fingerprint covers both.


def jinja_string(s: str) -> str:
    """s as a Jinja string literal. Anything past plain ASCII letters and punctuation is written as
    a \\U escape, so quotes, backslashes, newlines, Jinja's {{ %} and emoji come back unchanged."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'-()/")
    return '"' + "".join(c if c in safe else f"\\U{ord(c):08x}" for c in s) + '"'


# One Jinja statement per line, whitespace trimmed by {%- -%}: the text comes only from {{ }}.
_CHECK_MESSAGES = """\
{%- for message in messages -%}
  {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
    {{- raise_exception('message ' ~ loop.index0 ~ ': role must be system, user or assistant')
    -}}
  {%- endif -%}
  {%- if message['role'] == 'system' and not loop.first -%}
    {{- raise_exception('message ' ~ loop.index0 ~ ': a system message may only come first') -}}
  {%- endif -%}
{%- endfor -%}
"""

_CHATML = """\
{%- if messages[0]['role'] != 'system' and default_system -%}
  {{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
  {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

_ALPACA = """\
{%- if messages[0]['role'] == 'system' -%}
  {{- messages[0]['content'] -}}
{%- else -%}
  {{- default_system -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '\\n\\n### Instruction:\\n' + message['content'] -}}
  {%- elif message['role'] == 'assistant' -%}
    {{- '\\n\\n### Response:\\n' + message['content'] + '<|endoftext|>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '\\n\\n### Response:\\n' -}}
{%- endif -%}
"""

_LLAMA2 = """\
{%- set ns = namespace(system=default_system, first_user=true) -%}
{%- if messages[0]['role'] == 'system' -%}
  {%- set ns.system = messages[0]['content'] -%}
{%- endif -%}
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '[INST] ' -}}
    {%- if ns.system is not none and ns.first_user -%}
      {{- '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' -}}
    {%- endif -%}
    {{- message['content'] + ' [/INST]' -}}
    {%- set ns.first_user = false -%}
  {%- elif message['role'] == 'assistant' -%}
    {{- ' ' + message['content'] + '<|endoftext|>' -}}
  {%- endif -%}
{%- endfor -%}
"""


def jinja_template(template: str, system_prompt: str | None) -> str:
    """The Jinja chat template that renders what render() renders. A conversation without a system
    message gets the one the model was trained with (as sample.py adds it), or the template's own
    default."""
    if template == "chatml":
        default, body = system_prompt, _CHATML
    elif template == "alpaca":
        default, body = system_prompt or ALPACA_PREAMBLE, _ALPACA
    elif template == "llama2":
        default, body = system_prompt, _LLAMA2
    else:
        raise ValueError(f"no Jinja version of template {template!r}")
    default_literal = "none" if default is None else jinja_string(default)
    return f"{{%- set default_system = {default_literal} -%}}\n" + _CHECK_MESSAGES + body


if __name__ == "__main__":
    errors.report_user_errors()
    parser = errors.ArgumentParser(description="How a template renders a chat, and its targets.")
    parser.add_argument("template", nargs="?", default="chatml", choices=list(TEMPLATES))
    template = parser.parse_args().template
    example = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three primary colours."},
        {"role": "assistant", "content": "Red, yellow and blue."},
        {"role": "user", "content": "Which is the warmest?"},
        {"role": "assistant", "content": "Red."},
    ]
    ids, mask = encode(example, template)
    print(f"--- rendered ({template}) ---")
    print(render(example, template))
    print("--- token ids ---")
    print(ids)
    print("--- loss mask: dim = context (label -100), green = a target the model learns ---")
    print(show_mask(ids, mask, color=sys.stdout.isatty()))
    print(f"\n{sum(mask)} of {len(ids)} tokens are targets: each answer and its end token "
          f"{get_tokenizer().decode([end_token(template)])!r}, nothing else.")
