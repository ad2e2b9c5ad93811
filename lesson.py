# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The lesson, hands-on: what supervised fine-tuning teaches
#
# The outputs below come from one run of this notebook, top to bottom, on 2 cores of an AMD EPYC (torch
# 2.13.0+cpu, the trainings in fp32), idle: 6 min 7 s, 715 s of CPU
# (`/usr/bin/time -v jupyter nbconvert --execute --to notebook --inplace lesson.ipynb`). It needs no GPU and
# no download: a CPU, this repository, and `../shared` beside it (or a network) for GPT-2's tokenizer files.
#
# ![Three stages: pretraining data, SFT data (the prompt masked), behaviour; the same model at each](docs/lesson.svg)
#
# A pretrained GPT continues text. Supervised fine-tuning (SFT) shows it conversations and trains it
# with the very same next-token loss, except that only the answer's tokens count. What it learns is the
# *format* of an answer, and when to stop; the facts must already be in the model. To see that on a
# CPU we need a model that knows facts, so we make one: a small GPT pretrained on the biographies of a
# small world (40 countries, 100 people) whose facts we know. SFT then sees questions about *some*
# entities only. France is never in the SFT data.
#
# Every step uses the project's own code: `experiments/prepare_world.py` for the world,
# `train_pretrain.py` and `train_sft.py` (run as scripts, unchanged), `chat_template.py`, `model.py`,
# and `experiments/eval_qa.py`'s scoring rule.

# %%
import contextlib
import html
import io
import json
import os
import sys
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, Markdown, display

T0 = time.time()
ROOT = os.path.abspath("")  # the notebook runs in the repository's root
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

import chat_template  # noqa: E402  (the project's modules, from its root)
import errors  # noqa: E402
import eval_qa  # noqa: E402  (experiments/)
import knowledge  # noqa: E402

# Offline, tiktoken finds GPT-2's BPE files in its cache (docs/GUIDE.md, "Offline use"): fill one from
# ../shared when it is there. With a network, tiktoken downloads them itself.
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(os.path.join(SHARED, "gpt2")):
    os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(ROOT, "out", "tiktoken")
    chat_template.fill_tiktoken_cache(os.path.join(SHARED, "gpt2"), os.environ["TIKTOKEN_CACHE_DIR"])

SEED = 1337  # the world, the split and every training: another seed, another world
DTYPE = "float32"  # the same arithmetic on every CPU ("auto" is faster where the CPU has native bf16)
PRETRAIN_STEPS = 300  # a third of the experiment's recipe: the base already completes ~99% of its facts
OUT = os.environ.get("LESSON_OUT", os.path.join(ROOT, "out", "lesson"))
enc = chat_template.get_tokenizer()
IM_START, IM_END = chat_template.SPECIAL_TOKENS["<|im_start|>"], chat_template.SPECIAL_TOKENS["<|im_end|>"]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; outputs in {OUT}")


def train(trainer: str, name: str, *settings: str) -> str:
    """One run of the project's trainer (train_pretrain.py or train_sft.py) with the experiment's config for the
    world, as a subprocess; its output goes to OUT/name.log. Returns the checkpoint folder."""
    config = knowledge.PRETRAIN_CONFIG if trainer == "pretrain" else knowledge.SFT_CONFIG
    out_dir = os.path.join(OUT, name)
    command = [f"train_{trainer}.py", config, f"--out_dir={out_dir}", "--overwrite=True", f"--seed={SEED}",
               f"--dtype={DTYPE}", *settings]
    print("python " + " ".join(c.replace(ROOT + os.sep, "") for c in command))  # (paths from the root)
    t0 = time.time()
    knowledge.run(command, os.path.join(OUT, f"{name}.log"))
    print(f"  done in {time.time() - t0:.0f} s")
    return out_dir


def ask(model, prompt_ids: list[int], stop: int) -> dict:
    """The model's greedy continuation of prompt_ids (at most 32 tokens, eval_qa's rule) until stop:
    {"text", "ended"}."""
    return eval_qa.answer(model, [prompt_ids], stop)[0]


def chat_prompt(question: str, template: str = "chatml") -> list[int]:
    return chat_template.encode_prompt([{"role": "user", "content": question}], template)


# %% [markdown]
# ## 1. The base model is a completer
#
# The world: each entity's facts, written into biographies with several phrasings of every fact and the
# full name in every sentence (Physics of Language Models 3.1's "knowledge augmentation"), and split into
# SFT entities and held-out entities.

# %%
world_dir = os.path.join(OUT, "world")
with contextlib.redirect_stdout(io.StringIO()):  # (each prepare step prints a report)
    world, qa, folders = knowledge.prepare_data(world_dir, SEED, sizes=[], named=False)
bios = open(os.path.join(world_dir, "bios.txt"), encoding="utf-8").read().splitlines()
heldout = [e["name"] for e in world["entities"] if e["split"] == "heldout"]
print(f"{len(world['entities'])} entities, {len(heldout)} held out (France among them); "
      f"{len(bios):,} biographies, {sum(len(enc.encode_ordinary(b)) for b in bios):,} tokens")
print(next(b for b in bios if "France" in b))
print(next(b for b in bios if heldout[-1] in b))
sft_text = json.dumps(qa["sft"])
assert "France" not in sft_text and "Paris" not in sft_text  # no SFT question or answer mentions France
print(f"SFT data: {len(qa['sft'])} questions about the other entities ({knowledge.SFT_VAL} kept for the "
      f"validation loss, {len(qa['sft']) - knowledge.SFT_VAL} to train on); no word of France in it")

# %% [markdown]
# Pretraining: `train_pretrain.py`, the project's trainer, on those biographies, from scratch (4 layers,
# 128 wide, GPT-2's tokenizer: 7M weights, most of them the 50,304-row output layer).

# %%
base_dir = train("pretrain", "base", f"--data_dir={folders['bios']}", f"--max_iters={PRETRAIN_STEPS}")
base = eval_qa.load(base_dir)
completion = ask(base, enc.encode_ordinary("The capital of France is"), eval_qa.NEWLINE)
print(f"'The capital of France is' -> {completion['text']!r}")
base_chat = ask(base, chat_prompt("What is the capital of France?"), IM_END)
print(f"'What is the capital of France?' in the chat template -> {base_chat['text']!r}")
print(f"  ended with <|im_end|>: {base_chat['ended']}")
assert "Paris" in completion["text"] and not base_chat["ended"]

# %% [markdown]
# The base model knows the fact: it completes the sentence with Paris. Asked the question, it does not
# answer: it continues the text as if it were one more biography, and never stops. It has never seen a
# question, nor the chat template's markers.
#
# ## 2. The instruction dataset
#
# SFT data is instructions and good responses. Stanford Alpaca's records (`prepare_alpaca.py` reads
# them, and chats in two other formats): a factual one, a creative one, code, a summary.

# %%
alpaca_path = os.path.join(SHARED, "alpaca", "alpaca_5000.json")
if os.path.exists(alpaca_path):
    alpaca = json.load(open(alpaca_path, encoding="utf-8"))
    for i in (3287, 269, 4098, 102):  # factual, creative, coding, summarising
        record = {k: v if len(v) < 160 else v[:160] + "..." for k, v in alpaca[i].items()}
        print(json.dumps(record, ensure_ascii=False))
else:
    print(f"skipped: no {alpaca_path} (python prepare_alpaca.py downloads the whole set)")

# %% [markdown]
# Our world's SFT data has the same shape: a question about an SFT entity, and the answer in one sentence
# that uses a pronoun for the subject (a model this small cannot copy a name from the question reliably).

# %%
for record in qa["sft"][:4]:
    print(json.dumps({k: record[k] for k in ("instruction", "output")}))
print(f"... {len(qa['sft'])} in all; held-out questions (never trained on): {len(qa['heldout'])}")

# %% [markdown]
# ## 3. The chat template
#
# A template wraps each turn in markers, so that the model can tell who speaks and where its answer
# ends. ChatML, written by hand:

# %%
def to_chatml(messages: list[dict], add_generation_prompt: bool = False) -> str:
    text = ""
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if add_generation_prompt:  # the header the model's answer follows
        text += "<|im_start|>assistant\n"
    return text


example = qa["sft"][0]
conversation = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": example["instruction"]},
                {"role": "assistant", "content": example["output"]}]
print(to_chatml(conversation))
assert to_chatml(conversation) == chat_template.render(conversation)  # the project's rendering
assert to_chatml(conversation[:2], True) == chat_template.render(conversation[:2], add_generation_prompt=True)

# %% [markdown]
# The markers are not text: each is one special token, inserted by id. Typed as text, the same characters
# are several ordinary tokens, so a user can never forge a turn.

# %%
ids, mask = chat_template.encode(conversation)
print("ids:", ids)
print(f"<|im_start|> = {IM_START}, <|im_end|> = {IM_END}; the same characters as text: "
      f"{enc.encode_ordinary('<|im_end|>')}")
with torch.no_grad():  # (the logits after the answer's last token, the position before <|im_end|>)
    next_token = torch.softmax(base(torch.tensor([ids[:-2]]))[0][0, -1], dim=-1)
print(f"the base model's probability of <|im_end|> right after the answer: {next_token[IM_END]:.2e}")

# %% [markdown]
# GPT-2's vocabulary ends at 50256; the two markers are rows added to the embedding (50,304 rows in
# all), and pretraining never showed them. So they mean nothing to the base model: after a complete
# answer, it gives the end marker almost no chance. SFT has to teach what they mean.
#
# ## 4. The loss mask
#
# SFT trains on the answer only. Each token gets a label: itself where it is a target (the answer, and
# its end marker: the model must learn to stop), -100 elsewhere (system, user, headers), which the loss
# ignores. Below, each token with its label; the targets highlighted.

# %%
def ids_and_labels(messages: list[dict]) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for m in messages:
        is_answer = m["role"] == "assistant"
        for piece, target in ((IM_START, False), (m["role"] + "\n", False), (m["content"], is_answer),
                              (IM_END, is_answer), ("\n", False)):
            piece_ids = [piece] if isinstance(piece, int) else enc.encode_ordinary(piece)
            ids += piece_ids
            labels += piece_ids if target else [-100] * len(piece_ids)
    return ids, labels


ids, labels = ids_and_labels(conversation)
project_ids, project_mask = chat_template.encode(conversation)  # the project's: ids, and 1 on each target
assert ids == project_ids and labels == [i if m else -100 for i, m in zip(ids, project_mask, strict=True)]
cells = []
for i, label in zip(ids, labels, strict=True):
    cell = f"<code>{html.escape(repr(enc.decode([i]))[1:-1])}</code><sub>{label}</sub>"  # (a newline as \n)
    cells.append(f"<mark>{cell}</mark>" if label != -100 else cell)
display(HTML(" ".join(cells)))
print(chat_template.show_mask(project_ids, project_mask, color=False))  # the same as text: [targets]
print(f"{sum(label != -100 for label in labels)} of {len(ids)} tokens are targets")

# %% [markdown]
# The model predicts the *next* token, so the trainer feeds the ids but the last and scores each
# position against the label one to its right: `x = ids[:-1]`, `y = labels[1:]`. (`train_sft.py` does the
# same to rows packed with several examples, `data.packed_batch`.)
#
# ## 5. The same heartbeat
#
# Pretraining and SFT are the same training step. The loops of the two trainers, line for line:

# %%
def training_step(path: str) -> list[str]:
    lines = open(os.path.join(ROOT, path), encoding="utf-8").read().splitlines()
    start = next(i for i, line in enumerate(lines) if "for micro_step, (X, Y, P) in enumerate(batches)" in line)
    end = next(i for i, line in enumerate(lines) if "optimizer.zero_grad(set_to_none=True)" in line)
    return lines[start:end + 1]


step = training_step("train_pretrain.py")
assert step == training_step("train_sft.py")  # the same lines in both
print("\n".join(step))

# %% [markdown]
# `model(X, Y, P)` is `GPT.forward`, which computes the one loss of both, `model.cross_entropy`, over the
# positions whose target is not -100. A pretraining window has a target everywhere; an SFT example only
# in its answer. The same call on both:

# %%
window = enc.encode_ordinary("\n".join(bios[:3]))[:65]  # 64 tokens of the text, and the one after
with torch.no_grad():
    _, loss_pretraining = base(torch.tensor([window[:-1]]), torch.tensor([window[1:]]))
    _, loss_sft = base(torch.tensor([ids[:-1]]), torch.tensor([labels[1:]]))
print(f"a biography: {len(window) - 1} targets, loss {loss_pretraining:.3f} (the base model read these)")
print(f"an SFT example: {sum(label != -100 for label in labels[1:])} targets, loss {loss_sft:.3f} "
      "(the answer and <|im_end|>: new to it)")

# %% [markdown]
# Now SFT: `train_sft.py` from the base model, on the SFT questions, for 60 steps of 16 questions. (The
# experiment's recipe, in the README's table, pretrains 900 steps and asks each question in eighteen
# wordings for 120 steps, to answer wordings it never saw; here, the simplest: one wording.)

# %%
sft_dir = train("sft", "sft", f"--init_from={base_dir}", f"--data_dir={folders['all']}", "--log_interval=1")
curve = knowledge.learning_curve(sft_dir)
plt.figure(figsize=(6, 3))
plt.plot([r["iter"] for r in curve], [r["loss"] for r in curve])
plt.xlabel("SFT step")
plt.ylabel("training loss (answer tokens)")
plt.title("SFT on 314 questions")
plt.show()
sft = eval_qa.load(sft_dir)

# %% [markdown]
# ## 6. Before and after, on held-out entities
#
# The same question, in the chat template, to the base model and to the SFT model:

# %%
capitals = world["values"]["capital"]
for name, model in (("base", base), ("SFT", sft)):
    reply = ask(model, chat_prompt("What is the capital of France?"), IM_END)
    print(f"{name:>5}: {reply['text']!r}, ended with <|im_end|>: {reply['ended']}")
sft_france = ask(sft, chat_prompt("What is the capital of France?"), IM_END)
assert eval_qa.is_correct(sft_france["text"], "Paris", capitals) and sft_france["ended"]

# %% [markdown]
# SFT never showed France: the SFT model found Paris where pretraining put it. SFT taught the format
# (one sentence, then `<|im_end|>`), and to look a fact up. (Its first word is a guess: the biographies never
# say he, she or it, so the pronoun comes from SFT alone, and a small model gets it wrong.) Did SFT also teach
# facts? The control: the same SFT on a base model pretrained on the world *without* the held-out entities'
# biographies.

# %%
control_base_dir = train("pretrain", "control_base", f"--data_dir={folders['bios_control']}",
                         f"--max_iters={PRETRAIN_STEPS}")
control = eval_qa.load(train("sft", "control_sft", f"--init_from={control_base_dir}", f"--data_dir={folders['all']}"))
control_france = ask(control, chat_prompt("What is the capital of France?"), IM_END)
print(f"control: {control_france['text']!r}, ended with <|im_end|>: {control_france['ended']}")
assert control_france["ended"] and not eval_qa.is_correct(control_france["text"], "Paris", capitals)

# %% [markdown]
# The right shape, and a wrong fact: format, not knowledge. Over every held-out question (exact match,
# `eval_qa.py`'s rule):

# %%
results = {name: eval_qa.evaluate(model, qa["heldout"], world["values"], "chat")
           for name, model in (("base", base), ("SFT", sft), ("control", control))}
chance = eval_qa.chance(qa["heldout"], world)
for name, r in results.items():
    print(f"{name:>8}: {r['accuracy']:.1%} correct, {r['end_rate']:.1%} ended with <|im_end|>")
print(f"{'chance':>8}: {chance:.1%} (always the most frequent value)")
assert results["SFT"]["accuracy"] >= 0.70 and results["control"]["accuracy"] <= chance + 0.10
for row in [r for r in results["control"]["rows"] if r["attribute"] != "capital"][:3]:
    print(f"control on {row['entity']}'s {row['attribute']} ({row['value']}): {row['answer']!r}")

# %% [markdown]
# ## 7. The wrong template
#
# A model answers in the format it was tuned on. The same question under Llama-2's template, whose
# answer ends with `<|endoftext|>`:

# %%
llama2 = chat_prompt("What is the capital of France?", "llama2")
print(repr(enc.decode(llama2)))
reply = ask(sft, llama2, chat_template.end_token("llama2"))
print(f"SFT model: {reply['text']!r}, ended: {reply['ended']}")

# %% [markdown]
# Under a template it was never tuned on, the model still writes an answer, and even its own end token,
# `<|im_end|>`; but Llama-2's turn ends with `<|endoftext|>`, so generation never stops and the answer runs
# into more answers. A model answers in the format it was tuned on.
#
# ## 8. Several instructions, base against SFT
#
# Held-out entities, in the trained wording and in words no SFT question used, and one instruction
# from outside the world.

# %%
person = next(e for e in world["entities"] if e["split"] == "heldout" and e["kind"] != "country")["name"]
questions = ["What is the capital of France?", "Which city is the capital of France?",
             f"Where was {person} born?", f"What does {person} do for a living?", f"When was {person} born?",
             "Write a haiku about the sea."]
table = "| instruction | base model | SFT model |\n|---|---|---|\n"
for q in questions:
    answers = [ask(model, chat_prompt(q), IM_END) for model in (base, sft)]
    table += f"| {q} | " + " | ".join(a["text"].replace("\n", " ").replace("|", "/") + (" ⏹" if a["ended"] else " …")
                                      for a in answers) + " |\n"
facts = {a: v for e in world["entities"] if e["name"] == person for a, v in e["attributes"].items()}
display(Markdown(table + f"\n⏹ ended with `<|im_end|>`, … still going after 32 tokens. {person}: {facts}"))

# %% [markdown]
# The base model writes a biography, whatever it is asked. The SFT model answers each question about this
# world in one sentence and stops, in words it was trained on and mostly in others; where the words point at
# another attribute ("When was ... born?" has no "year" in it) it answers the question it recognises. Asked
# for a haiku, it answers with a fact: 314 questions about a world of facts taught one format, nothing more.
# (The knowledge experiment measures the unseen wordings over 440 questions.)
#
# Why so little data? The format is a small thing to learn. The knowledge experiment
# (`experiments/knowledge.py`, [its method and results](experiments/README.md)) fine-tunes the same kind of
# base model on 16, 64, 256 and all 314 questions: the middle panel of its figure (not retrained here). The
# end token is learned from the first 16 examples; looking facts up for any entity takes a few hundred.
#
# ![held-out accuracy per run, the data-size curve, pretraining loss](experiments/knowledge.png)

# %% [markdown]
# ## 9. The same on GPT-2 and Alpaca
#
# Where GPT-2's weights can be downloaded (about 500 MB, once), the same contrast on a real pretrained
# model; and, if you have trained it (`python train_sft.py configs/gpt2_alpaca.py`, made for a GPU), its
# SFT on Alpaca.

# %%
try:
    gpt2 = eval_qa.load("gpt2")
except errors.UserError as e:
    gpt2 = None
    print(f"skipped: GPT-2's weights could not be had here:\n{e}")
if gpt2 is not None:
    print("GPT-2:", repr(ask(gpt2, enc.encode_ordinary("The capital of France is"), eval_qa.NEWLINE)["text"]))
    haiku = chat_prompt("Write a haiku about machine learning.")
    print("GPT-2, chat form:", repr(ask(gpt2, haiku, IM_END)["text"]))
    tuned = os.path.join(ROOT, "out", "gpt2_alpaca")
    if os.path.exists(os.path.join(tuned, "ckpt.pt")):
        print("GPT-2 after SFT on Alpaca:", repr(ask(eval_qa.load(tuned), haiku, IM_END)["text"]))
    else:
        print(f"no {tuned}: python train_sft.py configs/gpt2_alpaca.py makes it")

# %%
print(f"the whole notebook: {time.time() - T0:.0f} s")
