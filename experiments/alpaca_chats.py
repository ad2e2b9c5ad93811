"""
Multi-turn conversations made of Alpaca records: the data of the multi-turn demo (README.md, "Your own data").

    python experiments/alpaca_chats.py --input data/alpaca/alpaca_data.json --out data/chats.jsonl
    python prepare_alpaca.py --input data/chats.jsonl --out_dir data/chats --max_len 256
    python experiments/alpaca_chats.py --input data/alpaca/alpaca_data.json --ckpt out/tiny_chats   # closed turns

Each conversation chains 1 to 3 consecutive records (in turn) as user/assistant exchanges, every other one
opened by a system message, and is written as a "messages" record, one per line: the format of TRL and of
most published chat sets. The questions of one conversation are unrelated, so these conversations teach the
turn structure (answer, close the turn, answer the next question), not how to use what was said before;
real multi-turn data (smoltalk, no_robots, OpenAssistant) teaches both.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import errors  # noqa: E402
from record_files import read_all  # noqa: E402
from records import to_messages  # noqa: E402

SYSTEM = "You are a helpful assistant."


def alpaca_chats(records: list[dict], n: int | None = None) -> list[list[dict]]:
    """Up to n conversations (all the records make, if None) of 1, 2, 3, 1, 2, 3, ... exchanges; records with an
    empty instruction or output are left out."""
    records = [r for r in records if r["instruction"].strip() and r["output"].strip()]
    conversations, i, k = [], 0, 0
    while i < len(records) and (n is None or k < n):
        conversation = [{"role": "system", "content": SYSTEM}] if k % 2 else []
        for record in records[i: i + 1 + k % 3]:
            conversation += to_messages(record, None)
        conversations.append(conversation)
        i, k = i + 1 + k % 3, k + 1
    return conversations


def closed_turns(ckpt: str, conversations: list[list[dict]], n: int = 10) -> tuple[int, int]:
    """(turns that ended with the end token, turns): the user turns of the last n three-question conversations,
    piped into sample.py --chat, which marks a turn that did not end by itself with "[no end token ...]"."""
    three = [c for c in conversations if sum(m["role"] == "user" for m in c) == 3][-n:]
    closed = turns = 0
    for conversation in three:
        questions = "".join(m["content"].replace("\n", " ") + "\n" for m in conversation if m["role"] == "user")
        out = subprocess.run([sys.executable, "sample.py", f"--ckpt={os.path.abspath(ckpt)}", "--chat"],
                             input=questions, text=True, capture_output=True, check=True, cwd=ROOT)
        turns += out.stdout.count("\nassistant: ")
        closed += out.stdout.count("\nassistant: ") - out.stdout.count("[no end token")
    return closed, turns


def main() -> None:
    parser = errors.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--input", required=True, help="a JSON list of Alpaca records")
    parser.add_argument("--out", help="the JSON Lines file to write")
    parser.add_argument("--ckpt", help="instead: count the turns this model closes in 10 three-question chats")
    args = parser.parse_args()
    if (args.out is None) == (args.ckpt is None):
        raise errors.UserError("give --out (write the conversations) or --ckpt (count a model's closed turns)")
    records = read_all(args.input, "alpaca")
    conversations = alpaca_chats(records)
    if args.ckpt:
        closed, turns = closed_turns(args.ckpt, conversations)
        print(f"{args.ckpt}: {closed} of {turns} turns ended with the end token")
        return
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations)
    os.replace(tmp, args.out)  # whole or not at all
    turns = sum(len(c) for c in conversations)
    print(f"wrote {len(conversations):,} conversations ({turns:,} turns) from {len(records):,} records to {args.out}")


if __name__ == "__main__":
    errors.report_user_errors()
    main()
