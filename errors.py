"""
The one way a script stops on a user's mistake: one line on stderr, `error: ...`, naming the bad value and the
fix, and exit code 2, with nothing left behind. (Tracebacks are for bugs.)

Library code raises UserError like any other exception; each script calls report_user_errors() once, first,
and a UserError that reaches its top is then reported by fail(). No torch here: the prepare scripts and
plot.py use this too, and should start in a fraction of a second.
"""

import argparse
import sys
from typing import NoReturn


class UserError(Exception):
    """A mistake in what the user asked for (a setting, a path, a file's content), not a bug. Its message is
    one line naming the bad value and the fix."""


def fail(message: str) -> NoReturn:
    """One line on stderr, `error: ...`, and exit code 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def report_user_errors() -> None:
    """From here on, a UserError that nothing catches ends the script through fail; every other exception is
    a bug and keeps its traceback."""

    def hook(kind, error, traceback):
        if issubclass(kind, UserError):
            fail(str(error))  # a SystemExit raised inside the hook is honoured: the exit code is 2
        sys.__excepthook__(kind, error, traceback)

    sys.excepthook = hook


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `error:` line too, not a usage block."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")
