"""
Exact-match question answering on the world of prepare_world.py: does a model know a fact, and does it stop?

    python experiments/eval_qa.py --world_dir out/knowledge/world --base out/knowledge/base --sft out/knowledge/sft

prints, for held-out and SFT entities separately, the exact-match accuracy and the end-token rate of the base
model in completion form ("The capital of France is") and in chat form (the question in the ChatML template),
and of the SFT model in chat form.

The scoring rule, written down before anything was measured, and never loosened afterwards:

  1. The model answers by greedy decoding (temperature 0, KV cache), at most MAX_NEW_TOKENS = 32 new tokens.
  2. The answer is the text generated before the form's end token, or all 32 tokens if that token never comes.
     The end token is <|im_end|> in chat form; in completion form (plain text, no template) it is the
     newline, which ends every biography in the pretraining text.
  3. The answer is correct when it contains the true value of the attribute and no other value of that
     attribute (all values the world has for it, e.g. every capital), each matched as a whole word, ignoring
     case. Text after the end token does not count, nor does the prompt.
  4. The end-token rate is the share of answers that emitted the end token within the 32 tokens.

What the answers are (answer_forms; a description beside the rule, not part of it, defined before measuring):
the share of answers that are exactly the reference answer (the SFT data's sentence, e.g. "Its capital is
Paris.", ignoring surrounding spaces), and per gender of the person asked about, the answers whose first word
is another kind's pronoun ("He"/"His" about a woman; "She"/"Her" about a man; "It"/"Its" about either).
"""

import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's root

import chat_template  # noqa: E402
import checkpoint  # noqa: E402
import errors  # noqa: E402

MAX_NEW_TOKENS = 32
NEWLINE = 198  # GPT-2's id of "\n": the end of a biography, so the end of a completion


def is_correct(answer: str, value: str, values: list[str]) -> bool:
    """Rule 3: the true value, as a whole word, and no other value of the attribute."""
    found = {v for v in values if re.search(rf"\b{re.escape(v)}\b", answer, re.IGNORECASE)}
    return found == {value}


def load(source: str, device: str = "cpu"):
    """A checkpoint folder (or .pt) -> the model, in fp32 so that answers are the same on every machine."""
    return checkpoint.load_model(source, device, torch.float32)[0]


def prompt_ids(record: dict, form: str) -> list[int]:
    if form == "completion":
        return chat_template.get_tokenizer().encode_ordinary(record["completion"])
    return chat_template.encode_prompt([{"role": "user", "content": record["instruction"]}], "chatml")


@torch.no_grad()
def answer(model, prompts: list[list[int]], end_token: int) -> list[dict]:
    """Greedy answers to many prompts: {"text", "ended"} each. Prompts of the same length go in one batch
    (generate has no padding mask, and needs none when the rows are equally long)."""
    enc = chat_template.get_tokenizer()
    device = next(model.parameters()).device
    results = [None] * len(prompts)
    by_length = {}
    for i, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(i)
    for length, rows in by_length.items():
        x = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
        out = model.generate(x, MAX_NEW_TOKENS, temperature=0.0, stop_tokens=(end_token,), vocab_size=enc.n_vocab)
        for row, i in enumerate(rows):
            new = out[row, length:].tolist()
            ended = end_token in new
            new = new[: new.index(end_token)] if ended else new
            results[i] = {"text": enc.decode(new), "ended": ended}
    return results


def evaluate(model, records: list[dict], values: dict, form: str) -> dict:
    """Accuracy and end-token rate of one model on QA records, in 'completion' or 'chat' form."""
    end_token = NEWLINE if form == "completion" else chat_template.end_token("chatml")
    answers = answer(model, [prompt_ids(r, form) for r in records], end_token)
    rows = []
    for record, a in zip(records, answers, strict=True):
        rows.append({"entity": record["entity"], "attribute": record["attribute"], "value": record["value"],
                     "answer": a["text"], "ended": a["ended"],
                     "correct": is_correct(a["text"], record["value"], values[record["attribute"]])})
    n = max(len(rows), 1)
    return {"accuracy": sum(r["correct"] for r in rows) / n, "end_rate": sum(r["ended"] for r in rows) / n,
            "n": len(rows), "rows": rows}


PRONOUN_KINDS = {"He": "male", "His": "male", "She": "female", "Her": "female", "It": "country", "Its": "country"}


def answer_forms(rows: list[dict], records: list[dict], kinds: dict) -> dict:
    """Of evaluate's rows (answers to records, in order): the share that is the reference sentence, and the
    pronoun errors by gender, {"female": [wrong, questions], "male": [...]}; kinds maps an entity to its kind."""
    reference = sum(row["answer"].strip() == record["output"] for row, record in zip(rows, records, strict=True))
    pronoun_errors = {"female": [0, 0], "male": [0, 0]}
    for row in rows:
        kind = kinds[row["entity"]]
        if kind in pronoun_errors:
            words = row["answer"].split()
            first = words[0] if words else ""
            pronoun_errors[kind][0] += PRONOUN_KINDS.get(first, kind) != kind
            pronoun_errors[kind][1] += 1
    return {"reference": reference / max(len(rows), 1),
            "reference_of_correct": reference / max(sum(row["correct"] for row in rows), 1),
            "pronoun_errors": pronoun_errors}


def by_wording(rows: list[dict], records: list[dict]) -> dict:
    """Of evaluate's rows (answers to records, in order): {question wording: [correct, questions]}, the wording
    being the record's template ("When was {subj} born?"), in the order the records first use them."""
    counts = {}
    for row, record in zip(rows, records, strict=True):
        count = counts.setdefault(record["wording"], [0, 0])
        count[0] += row["correct"]
        count[1] += 1
    return counts


def chance(records: list[dict], world: dict) -> float:
    """The accuracy of always answering an attribute's most frequent value (over all of the world's entities),
    averaged over the records."""
    best_share = {}
    for attr in {r["attribute"] for r in records}:
        counts = {}
        for e in world["entities"]:
            if attr in e["attributes"]:
                counts[e["attributes"][attr]] = counts.get(e["attributes"][attr], 0) + 1
        best_share[attr] = max(counts.values()) / sum(counts.values())
    return sum(best_share[r["attribute"]] for r in records) / max(len(records), 1)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--world_dir", default="out/knowledge/world", help="prepare_world.py's output folder")
    parser.add_argument("--base", help="the pretrained model (a folder with ckpt.pt): completion and chat form")
    parser.add_argument("--sft", help="the SFT model: chat form")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.base and not args.sft:
        raise errors.UserError("give --base and/or --sft")
    world = read_json(os.path.join(args.world_dir, "world.json"))
    qa = {split: read_json(os.path.join(args.world_dir, f"{split}_qa.json")) for split in ("heldout", "sft")}
    runs = ([(f"base {args.base}", args.base, ("completion", "chat"))] if args.base else []) + (
        [(f"SFT {args.sft}", args.sft, ("chat",))] if args.sft else [])
    print(f"chance (most frequent value), held-out questions: {chance(qa['heldout'], world):.1%}")
    print("| model | form | held-out accuracy | held-out end rate | SFT-entity accuracy | SFT-entity end rate |")
    print("|---|---|---|---|---|---|")
    for label, source, forms in runs:
        model = load(source, args.device)  # once per model, for all its forms
        for form in forms:
            held, seen = (evaluate(model, qa[split], world["values"], form) for split in ("heldout", "sft"))
            print(f"| {label} | {form} | {held['accuracy']:.1%} | {held['end_rate']:.1%} | {seen['accuracy']:.1%} "
                  f"| {seen['end_rate']:.1%} |")


if __name__ == "__main__":
    errors.report_user_errors()
    main()
