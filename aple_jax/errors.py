"""User mistakes, typed: entry points print an `AplejaxError` as one `error:` line and exit with status 2.

Everything that is not an `AplejaxError` is a bug in aple-jax and keeps its traceback. Set `APLE_JAX_TRACEBACK=1`
(or pass `--verbosity=1` to launch.py) to see the traceback of a user error too.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import shlex
import signal
import sys
from typing import Iterator

EXIT_USER_ERROR = 2
EXIT_SIGINT = 130    # 128 + the signal's number, as shells report a process ended by that signal
EXIT_SIGTERM = 143
TRACEBACK_ENV = "APLE_JAX_TRACEBACK"


class AplejaxError(Exception):
    """A mistake in what the user gave: the message names the key, file or value and what was expected.

    `hint`, when set, is printed as a second line (what to do about it).
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class ConfigError(AplejaxError, ValueError):
    """A config value, key or combination of values that cannot run."""


class CheckpointError(AplejaxError, ValueError):
    """A run directory, checkpoint or prompts file that cannot be used as it is."""


class WeightsError(AplejaxError, ValueError):
    """CLIP weights or a tokenizer that do not fit the backbone."""


class TrainingDivergedError(AplejaxError, FloatingPointError):
    """The loss or the prompts became NaN or infinite; the last good checkpoint is kept."""


class StorageError(AplejaxError, FileNotFoundError):
    """A local or gs:// path that is missing or cannot be reached."""


class RunLockedError(CheckpointError):
    """Another run holds the run directory's lock."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped a run (a BaseException, like KeyboardInterrupt, so that no `except Exception`
    swallows it). `step`: the training step saved before stopping (None: stopped outside training, nothing new
    to save); `where`: the run directories."""

    def __init__(self, signum: int, step: int | None = None, where: tuple[str, ...] = (), note: str = ""):
        super().__init__(signum, step, where)
        self.signum, self.step, self.where, self.note = signum, step, where, note

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.note:
            return f"{name} {self.note}"
        dirs = ", ".join(self.where) or "the run directory"
        if self.step is None:
            return f"{name} stopped the run outside training (nothing new to save) in {dirs}"
        return f"{name} stopped training at step {self.step}: checkpoint saved in {dirs}"


class ReportError(AplejaxError, ValueError):
    """Runs that cannot be reported or compared: unfinished, malformed, mixing incompatible configs, unknown names."""


def did_you_mean(key: str, known: list[str]) -> str:
    """`"; did you mean 'optim.lr'?"` for the closest of the `known` dotted keys, else ''."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close and "." in key:   # a wrong last part under a right parent: compare the last parts
        parent, last = key.rsplit(".", 1)
        siblings = [k.rsplit(".", 1)[-1] for k in known if k.rsplit(".", 1)[0] == parent]
        close = [f"{parent}.{m}" for m in difflib.get_close_matches(last, siblings, n=1, cutoff=0.5)]
    return f"; did you mean {close[0]!r}?" if close else ""


def show_traceback() -> bool:
    """Whether user errors should keep their traceback (`APLE_JAX_TRACEBACK=1`)."""
    return os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false", "no")


def format_error(error: BaseException) -> str:
    """`error: <message>` and, where the error has one, `hint: <hint>`."""
    lines = [f"error: {' '.join(str(error).split())}" if str(error) else f"error: {type(error).__name__}"]
    if getattr(error, "hint", ""):
        lines.append(f"hint: {error.hint}")
    return "\n".join(lines)


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Around an entry point's main: a user error becomes one `error:` line on stderr and exit status 2; a run
    stopped by a signal one `interrupted:` line saying how to resume and status 128 + the signal's number."""
    try:
        yield
    except AplejaxError as e:
        if show_traceback():
            raise
        print(format_error(e), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except (Interrupted, KeyboardInterrupt) as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        print(f"interrupted: {stop}; to resume, run the same command again: {resume_command()}", file=sys.stderr,
              flush=True)
        raise SystemExit(stop.exit_status) from None


def resume_command() -> str:
    """This process's command line, to paste."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))
