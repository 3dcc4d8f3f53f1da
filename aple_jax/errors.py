"""User mistakes, typed: entry points print an `AplejaxError` as one `error:` line and exit with status 2.

Everything that is not an `AplejaxError` is a bug in aple-jax and keeps its traceback. Set `APLE_JAX_TRACEBACK=1`
(or pass `--verbosity=1` to launch.py) to see the traceback of a user error too.
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import re
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
    """A local or gs:// path that is missing."""


class StorageFaultError(AplejaxError, OSError):
    """A local or gs:// path that cannot be read or written: a full or read-only disk, a storage server that cannot
    be reached, a bucket that vanished. What was saved before is kept."""


class PathError(AplejaxError):
    """A path spelled wrong: an unknown scheme (`gcs://`), a malformed bucket URI (`gs:/b`, `gs://`).

    Not a ValueError on purpose: argparse turns a ValueError raised by a `type=` function into a message of its own;
    this one reaches the entry point's error boundary with its message and fix.
    """


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


# OSError numbers that mean the storage, not aple-jax, failed: what each says, and what to do about it.
_DISK_ERRNOS = {
    errno.ENOSPC: ("no space left on the device", "free space (or pick another --workdir) and rerun the command"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space (or pick another --workdir) and rerun the command"),
    errno.EROFS: ("the file system is read-only", "pick a writable --workdir, or remount it read-write"),
    errno.EACCES: ("permission denied", "pick a path you may write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "pick a path you may write, or fix its permissions"),
    errno.EIO: ("an input/output error of the device", "check the disk, then rerun the command"),
}
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                   errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EPIPE}
# Exception classes (by module prefix and name, so nothing here imports them) that mean a server did not answer.
_NETWORK_CLASSES = {("aiohttp", "ClientConnectionError"), ("aiohttp", "ServerTimeoutError"),
                    ("requests", "ConnectionError"), ("fsspec", "FSTimeoutError"), ("google", "TransportError")}
# tensorstore (orbax's writer) raises ValueError("<STATUS>: ... [os_error_code='28']"): its OS error, or a status
# that means the server did not answer.
_TENSORSTORE_OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")
_TENSORSTORE_NETWORK = re.compile(r"^(UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED): ")
SERVER_HINT = ("check the network and the storage endpoint (STORAGE_EMULATOR_HOST when set), then rerun the same "
               "command: it resumes from the last checkpoint")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _fault_errno(error: BaseException) -> int | None:
    """The errno of a storage fault that `error` itself is, else None."""
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS.keys() | _NETWORK_ERRNOS:
        return error.errno
    if isinstance(error, (ConnectionError, TimeoutError)):
        return errno.ECONNREFUSED
    for cls in type(error).__mro__:
        if (cls.__module__.split(".")[0], cls.__name__) in _NETWORK_CLASSES:
            return errno.ECONNREFUSED
    if type(error).__module__.startswith("gcsfs") and str(getattr(error, "code", "")).startswith("5"):
        return errno.ECONNREFUSED       # gcsfs's HttpError: the server kept failing
    if isinstance(error, ValueError):
        code = _TENSORSTORE_OS_ERROR.search(str(error))
        if code and int(code.group(1)) in _DISK_ERRNOS:
            return int(code.group(1))
        if _TENSORSTORE_NETWORK.match(str(error)):
            return errno.ECONNREFUSED
    return None


def storage_fault(error: BaseException, path: str = "", doing: str = "write") -> "StorageFaultError | None":
    """The StorageFaultError that `error` (or an exception it came from) means for `path` (default: the file the
    error names), or None where it is no storage fault (a bug keeps its traceback)."""
    for e in _chain(error):
        number = _fault_errno(e)
        if number is None:
            continue
        where = path or _user_file(getattr(e, "filename", None)) or "a file"
        if number in _NETWORK_ERRNOS:
            endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "storage.googleapis.com")
            detail = next((str(x) for x in _chain(e) if str(x)), type(e).__name__)
            return StorageFaultError(f"cannot {doing} {where}: the storage server {endpoint} did not answer "
                                     f"({' '.join(detail.split())[:200]})", hint=SERVER_HINT)
        reason, hint = _DISK_ERRNOS[number]
        return StorageFaultError(f"cannot {doing} {where}: {reason}", hint=hint + "; what was saved before is kept")
    return None


def _user_file(filename: object) -> str:
    """The file a user knows for an OSError's filename: the target of aple-jax's `.<name>.<hex>.tmp` files."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return ""
    text = os.fsdecode(filename)
    head, name = os.path.split(text)
    parts = name.split(".")
    if name.startswith(".") and name.endswith(".tmp") and len(parts) >= 4:
        return os.path.join(head, ".".join(parts[1:-2]))
    return text


class StorageFaultLogs:
    """A logging filter that drops error records carrying a storage fault: libraries (orbax, asyncio, gcsfs) log
    one with its traceback before raising it; the entry point reports it once, as one line."""

    def filter(self, record) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and storage_fault(error) is not None)


@contextlib.contextmanager
def storage_faults(path: object, doing: str = "write") -> Iterator[None]:
    """Around reads and writes of `path`: a storage fault inside becomes one StorageFaultError naming `path`."""
    try:
        yield
    except AplejaxError:
        raise
    except Exception as e:
        fault = storage_fault(e, os.fspath(path) if isinstance(path, os.PathLike) else str(path), doing)
        if fault is None:
            raise
        raise fault from e


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
    """Around an entry point's main: a user error, or a storage fault (full or read-only disk, unreachable storage
    server), becomes one `error:` line on stderr and exit status 2; a run stopped by a signal one `interrupted:`
    line saying how to resume and status 128 + the signal's number."""
    try:
        yield
    except AplejaxError as e:
        _exit_with(e)
    except (Interrupted, KeyboardInterrupt) as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        print(f"interrupted: {stop}; to resume, run the same command again: {resume_command()}", file=sys.stderr,
              flush=True)
        raise SystemExit(stop.exit_status) from None
    except Exception as e:     # a storage fault that no write site named: the file in the error, one line all the same
        fault = storage_fault(e, doing="use")
        if fault is None:
            raise
        _exit_with(fault, e)


class StorageFaultExit(SystemExit):
    """The exit of a process that a storage fault ended (see `exit_at_once_after_storage_faults`)."""


def _exit_with(error: AplejaxError, original: BaseException | None = None) -> None:
    if show_traceback():
        raise original or error
    print(format_error(error), file=sys.stderr, flush=True)
    raise (StorageFaultExit if isinstance(error, StorageFaultError) else SystemExit)(EXIT_USER_ERROR) from None


@contextlib.contextmanager
def exit_at_once_after_storage_faults() -> Iterator[None]:
    """Around an entry point that saves checkpoints, outside its error boundary: after a storage fault's error line
    the process ends at once. orbax's background save threads that wait for a step of the failed save would
    otherwise hold the interpreter's shutdown for orbax's coordination timeout (300 s); nothing they could still
    write reaches the failed storage, and the checkpoints committed before are whole."""
    try:
        yield
    except StorageFaultExit as stop:
        logging.shutdown()            # the log files' last lines
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code)


def resume_command() -> str:
    """This process's command line, to paste."""
    return shlex.join(getattr(sys, "orig_argv", sys.argv))
