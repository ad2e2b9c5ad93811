"""
Settings for the training scripts, nanoGPT style: defaults in the script, then a config file, then overrides.

    python train_sft.py configs/gpt2_alpaca.py --batch_size=4 --max_iters 100    # --key=value or --key value

A config file is plain Python assignments. Every key must already exist in the script's defaults and keep
its type (an int may stand for a float), so a typo such as --learing_rate=1e-4 stops the run at once,
listing the valid keys, instead of silently training with the default.
"""

import ast
import difflib
import os
import types

from errors import UserError


def load_config(defaults: dict, argv: list[str]) -> dict:
    """The settings: defaults, then each config file and --key=value of argv in order. Says which settings
    differ from the defaults (or that none was given), so that a run's log tells what it is."""
    config = dict(defaults)
    say = os.environ.get("RANK", "0") == "0"  # under torchrun, the first process speaks for all
    args = iter(argv)
    for arg in args:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep:  # --key value
                raw = next(args, None)
                if raw is None or raw.startswith("--"):
                    raise UserError(f"{arg}: expected --{key}=value or --{key} value")
                arg = f"{arg}={raw}"
            try:
                value = ast.literal_eval(raw)  # numbers, True/False, None, quoted strings, lists
            except (ValueError, SyntaxError):
                value = raw  # a bare word such as --init_from=gpt2 is a string
            _set(config, key, value, arg)
        else:
            if arg.startswith("-"):
                raise UserError(f"{arg}: expected --key=value or a config file (e.g. configs/gpt2_alpaca.py)")
            if not os.path.isfile(arg):
                what = "is a folder, not a config file" if os.path.isdir(arg) else "does not exist"
                raise UserError(f"config file {arg} {what} (configs/ holds the shipped ones)")
            if say:
                print(f"config file: {arg}")
            with open(arg) as f:
                source = f.read()
            values = {}
            exec(compile(source, arg, "exec"), {}, values)
            for key, value in values.items():
                if not key.startswith("_") and not isinstance(value, types.ModuleType):
                    _set(config, key, value, arg)
    changed = [f"{k}={v!r}" for k, v in config.items() if v != defaults[k]]
    if say and not argv:
        print("no config file and no --key=value: every setting is the script's default (the shipped runs "
              "are configs/*.py, e.g. configs/gpt2_alpaca.py)")
    elif say:
        print(f"settings that differ from the defaults: {', '.join(changed) or 'none'}")
    return config


def _set(config: dict, key: str, value, where: str) -> None:
    if key not in config:
        close = difflib.get_close_matches(key, config, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{where}: unknown setting {key!r}.{hint} Valid settings: {', '.join(sorted(config))}")
    default = config[key]
    if type(value) is int and type(default) is float:
        value = float(value)
    if default is not None and type(value) is not type(default):
        name = type(default).__name__
        article = "an" if name[0] in "aeiou" else "a"  # an int, a float
        raise UserError(f"{where}: {key} must be {article} {name} (default {default!r}), "
                        f"got {value!r} ({type(value).__name__})")
    config[key] = value
