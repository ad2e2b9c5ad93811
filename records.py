"""
The three record formats of SFT data, and how a record becomes a conversation: detect, check, convert.

    alpaca    {"instruction": ..., "input": ... (optional), "output": ...}
    messages  {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}
    sharegpt  {"conversations": [{"from": "system" | "human" | "gpt" | "user" | "assistant", "value": ...}, ...]}

A file's format is told by its first record's fields (or a Parquet file's columns). `conversation` checks one
record and turns it into chat_template's messages: an optional system message, then user and assistant turns
in turn, ending with the assistant's. An Alpaca record is one exchange (user = instruction [+ "\\n\\n" +
input]). A record's own system message wins over --system_prompt. Other fields of a record (an id, a category)
are ignored; fields that change what a conversation means (tool calls, images, a turn's "name") are an
error, never a silent drop. --roles maps other spellings of a turn's role to ours. Record and turn numbers
count from 0, like a Python list index (jq's .[3]). record_files.py reads the files.
"""

import chat_template
from errors import UserError

ALPACA_FIELDS = ("instruction", "input", "output")  # "input" may be absent
FORMATS = {"alpaca": "instruction", "messages": "messages", "sharegpt": "conversations"}  # the field that names it
TURN_FIELDS = {"messages": ("role", "content"), "sharegpt": ("from", "value")}  # a turn's two fields
ROLE_NAMES = {"messages": {role: role for role in chat_template.ROLES},  # the format's role -> ours
              "sharegpt": {"system": "system", "human": "user", "gpt": "assistant",
                           "user": "user", "assistant": "assistant"}}  # (many ShareGPT files use ours)
# Fields that change what a conversation means: tools the assistant calls, images it looks at. Dropping them
# would train on half a conversation, so they stop the run instead.
UNSUPPORTED = ("tools", "functions", "tool_calls", "images", "image", "audios", "videos",
               "history")  # (earlier turns beside an Alpaca record, LLaMA-Factory's: use the messages format)
SKIPS = ("empty_instruction", "empty_output", "bad_conversation")  # why a record is skipped (meta.json counts)


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for error messages about the file (not about Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def detect_format(first, source: str, parquet: bool = False) -> str:
    """The format of a file, from its first record's fields (or a Parquet file's columns)."""
    if not isinstance(first, dict):
        raise UserError(f"{source}: record 0 is a JSON {json_type(first)}, expected an object: {first!r:.80}")
    found = [fmt for fmt, field in FORMATS.items() if field in first]
    if len(found) != 1:
        named = ", ".join(f"{field!r} ({fmt})" for fmt, field in FORMATS.items())
        has = " and ".join(repr(FORMATS[f]) for f in found) if found else "none of " + named
        what, fields = ("its columns have", "columns") if parquet else ("record 0 has", "fields")
        raise UserError(f"{source}: {what} {has}, so its format is unclear (its {fields}: {sorted(first)}); "
                        "name it with --format alpaca|messages|sharegpt")
    return found[0]


def parse_roles(spec: str | None) -> dict:
    """--roles 'bot=assistant,prompter=user': more spellings of a turn's role, each mapped to one of ours."""
    roles = {}
    for pair in spec.split(",") if spec else []:
        name, _, role = pair.partition("=")
        if role.strip() not in chat_template.ROLES or not name.strip():
            raise UserError(f"--roles {spec}: give name=role pairs, each role one of {', '.join(chat_template.ROLES)}"
                            ", like --roles bot=assistant,prompter=user")
        roles[name.strip()] = role.strip()
    return roles


def check_record(record, source: str, i: int, fmt: str, forced: bool, roles: dict) -> None:
    """Stop at a record that is not of the file's format (forced: named by --format): an object with string
    fields."""
    where = f"{source}: record {i}"
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {json_type(record)}, expected an object: {record!r:.80}")
    other = [f for f, field in FORMATS.items() if f != fmt and field in record]
    if FORMATS[fmt] not in record and other and forced:
        raise UserError(f"{source}: --format {fmt} was given, but record {i} is in the {other[0]} format "
                        f"({FORMATS[other[0]]!r}); --format applies to every --input: leave it out to tell "
                        "each file's format from its first record")
    if FORMATS[fmt] not in record and other:
        raise UserError(f"{where} is in the {other[0]} format ({FORMATS[other[0]]!r}), but this file is {fmt}; a "
                        "file holds one format: put each format in its own file, each given with --input")
    unsupported = [field for field in UNSUPPORTED if field in record]
    if unsupported:
        raise UserError(f"{where} has {unsupported[0]!r}: tools, images and earlier turns kept beside a record are "
                        "not read here; remove those records, or write a conversation as a messages record")
    if not isinstance(record.get("system", ""), str):
        raise UserError(f"{where}: 'system' is a JSON {json_type(record['system'])}, expected a string")
    if fmt == "alpaca":
        check_alpaca(record, where)
    else:
        check_turns(record, where, fmt, roles)


def check_alpaca(record: dict, where: str) -> None:
    for field in ("instruction", "output"):
        if field not in record:
            raise UserError(f"{where} has no {field!r} field (its fields: {sorted(record)})")
    for field in ALPACA_FIELDS:
        if field in record and not isinstance(record[field], str):
            raise UserError(f"{where}: {field!r} is a JSON {json_type(record[field])} "
                            f"({record[field]!r:.40}), expected a string")


def check_turns(record: dict, where: str, fmt: str, roles: dict) -> None:
    """A messages or ShareGPT record: a list of turns, each with exactly the format's two string fields."""
    field, (role_field, text_field) = FORMATS[fmt], TURN_FIELDS[fmt]
    turns = record.get(field)
    if not isinstance(turns, list):
        raise UserError(f"{where}: {field!r} is a JSON {json_type(turns)}, expected a list of "
                        f'{{"{role_field}": ..., "{text_field}": ...}} turns')
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}, turn {j} is a JSON {json_type(turn)}, expected an object: {turn!r:.80}")
        extra = sorted(set(turn) - {role_field, text_field})
        if extra:
            raise UserError(f"{where}, turn {j} has {', '.join(map(repr, extra))} besides {role_field!r} and "
                            f"{text_field!r}: tool calls, names and images are not part of the {fmt} format "
                            "read here; remove those fields, or those records")
        role = turn.get(role_field)
        if not isinstance(role, str) or role not in {**ROLE_NAMES[fmt], **roles}:
            raise UserError(f"{where}, turn {j}: {role_field!r} is {role!r}, not one of "
                            f"{', '.join(map(repr, {**ROLE_NAMES[fmt], **roles}))}; map it to one of ours with "
                            f"--roles {role if isinstance(role, str) else 'NAME'}=assistant (or user, system), "
                            "rename it, or remove the record")
        if not isinstance(turn.get(text_field), str):
            raise UserError(f"{where}, turn {j}: {text_field!r} is a JSON {json_type(turn.get(text_field))}, "
                            "expected a string")


def to_messages(record: dict, system_prompt: str | None) -> list[dict]:
    """An Alpaca record as messages. Alpaca's convention: the optional input follows the instruction after a
    blank line. The record's own "system" field (LLaMA-Factory's) wins over system_prompt."""
    user = record["instruction"]
    extra = record.get("input", "")
    if extra.strip():  # test emptiness on the stripped text, but keep the author's text exactly as written
        user = user + "\n\n" + extra
    system = record["system"] if record.get("system", "").strip() else system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return messages


def turns_to_messages(record: dict, fmt: str, roles: dict) -> list[dict]:
    """A messages or ShareGPT record's turns as chat_template's messages, contents exactly as written."""
    role_field, text_field = TURN_FIELDS[fmt]
    names = {**ROLE_NAMES[fmt], **roles}
    return [{"role": names[t[role_field]], "content": t[text_field]} for t in record[FORMATS[fmt]]]


def conversation_problem(messages: list[dict]) -> str | None:
    """Why a conversation cannot be trained on as written, or None: after an optional system message, user
    and assistant alternate, starting with the user and ending with the assistant (its last turn is a
    target), and no turn is empty."""
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    if len(messages) == offset:
        return "it has no user or assistant turn"
    for j, m in enumerate(messages[offset:], start=offset):  # (an empty system message means none)
        if not m["content"].strip():
            return f"turn {j} ({m['role']}) is empty"
    for j, m in enumerate(messages[offset:], start=offset):
        expected = ("user", "assistant")[(j - offset) % 2]
        if m["role"] != expected:
            return (f"turn {j} is the {m['role']}'s where the {expected}'s should be (after an optional first "
                    "system message, turns alternate user, assistant)")
    if messages[-1]["role"] != "assistant":
        return "it ends with the user's turn; the last turn must be the assistant's"
    return None


def conversation(record, source: str, i: int, fmt: str, forced: bool, system_prompt: str | None, skip_bad: bool,
                 roles: dict) -> tuple[list[dict], str | None]:
    """One record, checked, as (messages, None), or (messages, why it is skipped: 'empty_instruction',
    'empty_output' or 'bad_conversation')."""
    check_record(record, source, i, fmt, forced, roles)
    where = f"{source}: record {i}"
    if fmt == "alpaca":  # Alpaca's empty fields are common: skipped and counted, not an error
        empty = [field for field in ("instruction", "output") if not record[field].strip()]
        return to_messages(record, system_prompt), f"empty_{empty[0]}" if empty else None
    messages = turns_to_messages(record, fmt, roles)
    problem = conversation_problem(messages)  # on the record's own turns: turn numbers are the file's
    if problem is not None and not skip_bad:
        raise UserError(f"{where}: {problem}; fix the record, or pass --skip_bad to drop (and count) such records")
    # The system message: the record's own (a first system turn or a "system" field, not both), else
    # system_prompt. An empty one is none.
    has_system_turn = bool(messages) and messages[0]["role"] == "system"
    own, field = messages[0]["content"] if has_system_turn else "", record.get("system", "")
    if own.strip() and field.strip():
        raise UserError(f"{where} has a 'system' field and a system turn; keep one of them")
    system = own if own.strip() else field if field.strip() else system_prompt
    turns = messages[1:] if has_system_turn else messages
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    return messages, None if problem is None else "bad_conversation"
