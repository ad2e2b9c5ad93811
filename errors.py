"""
The one way a script stops on a user's mistake: one line on stderr, `error: ...`, naming the bad value and the
fix, and exit code 2, with nothing left behind. (Tracebacks are for bugs.)

The rule: a failure the user can fix (a setting, a path, a file's content, a download that did not come)
raises UserError, or a subclass such as download.DownloadError, where it happens, with the message the user
should read; nothing translates one kind of exception into another on its way up. A bug (a caller breaking a
function's contract) raises a builtin exception and keeps its traceback. Each script calls
report_user_errors() once, first; a UserError that reaches its top is then reported by fail().

One stop is not a mistake and is not reported with `error:`: a run stopped by a signal (Ctrl-C, or the SIGTERM
that `timeout`, `kill` and job schedulers send) says so in one line and exits 130 (SIGINT) or 143 (SIGTERM),
the codes a shell gives such a stop. The trainers save before they stop (common.StopSignals). No torch here:
the prepare scripts and plot.py use this too, and should start in a fraction of a second.
"""

import argparse
import difflib
import re
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
    """From here on, a UserError that nothing catches ends the script through fail, and a Ctrl-C that nothing
    catches with one line and exit code 130; every other exception is a bug and keeps its traceback."""

    def hook(kind, error, traceback):
        if issubclass(kind, UserError):
            fail(str(error))  # a SystemExit raised inside the hook is honoured: the exit code is 2
        if issubclass(kind, KeyboardInterrupt):
            print("stopped (Ctrl-C)", file=sys.stderr, flush=True)
            raise SystemExit(130)
        sys.__excepthook__(kind, error, traceback)

    sys.excepthook = hook


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `error:` line too, not a usage block, and an unknown option
    names the closest known one (--outdir: did you mean --out_dir?)."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(unknown.group(1).split("=")[0], known, n=1)
            if close:
                message += f"; did you mean {close[0]}?"
        fail(f"{message} (see {self.prog} --help)")
