"""One writer per run directory: `<workdir>/run.lock`, taken before anything is written there and released at the
end (a finished, failed or interrupted run alike).

- Local disk: the file is held with `fcntl.flock`, which the kernel drops when its process ends in any way
  (`kill -9` too); a lock file that nobody holds is stale and is taken over.
- Bucket (`gs://`): an object created only where none exists (`ifGenerationMatch=0`), naming its holder and
  rewritten by it every HEARTBEAT_S seconds. It is stale when its holder is a process of this host that is gone,
  or when it has not been rewritten for STALE_S seconds (its host is gone). Taking over deletes that generation
  only, then creates the lock again only where none exists: of two runs taking over one stale lock, one wins.

Several processes (`jax.distributed`): process 0 takes the locks and tells the others whether it could, so that
all of them stop with the same error line (each host's own lock would let two half-started jobs each hold a part).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from aple_jax import paths
from aple_jax.errors import RunLockedError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 60.0
STALE_S = 600.0
_AGREE_BYTES = 2048


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc), to tell it from a later process with its number."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_record() -> dict[str, Any]:
    """Who holds a lock: host, process id and start, time taken (UTC)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a run that is starting"
    return f"process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _gone_from_this_host(holder: dict[str, Any]) -> bool:
    """Whether the holder was a process of this host that has ended."""
    if holder.get("host") != socket.gethostname():
        return False
    return _process_start(int(holder.get("pid", -1))) != holder.get("pid_start")


def _parse(data: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(path: Any, holder: dict[str, Any], extra: str = "") -> RunLockedError:
    workdir = paths.as_path(path).parent
    return RunLockedError(f"run directory {workdir} is in use by another run ({describe(holder)}; lock {path})",
                          hint=f"wait for that run to end, or stop it (it saves and releases the lock), or use "
                               f"another --workdir{extra}")


def _taking_over(path: Any, holder: dict[str, Any]) -> None:
    print(f"run lock {path}: taking over from {describe(holder)}, which is gone", flush=True)


class LocalLock:
    """`run.lock` on local disk, held with flock for the life of the run."""

    def __init__(self, path: str):
        self.path = path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 4096, 0))
                os.close(fd)
                raise _refusal(path, holder) from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break   # not a file that its holder removed between our open and our flock
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd
        stale = _parse(os.pread(fd, 4096, 0))
        if stale:
            _taking_over(path, stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record()).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        os.unlink(self.path)   # before the flock goes, so that no one takes the lock of a removed file
        os.close(self._fd)


class BucketLock:
    """`run.lock` as a bucket object created with a generation precondition, kept alive by a heartbeat."""

    def __init__(self, path: str):
        import fsspec
        self.path = path
        self._fs = fsspec.filesystem(path.split("://", 1)[0])
        self._key = path.split("://", 1)[1]
        self._record = json.dumps(holder_record()).encode()
        if not self._create():
            holder, generation, age = self._current()
            if generation is not None and not (_gone_from_this_host(holder) or age > STALE_S):
                raise _refusal(path, holder, f"; if it is gone, the lock is taken over once it is "
                                             f"{STALE_S / 60:.0f} minutes old (or delete {path})")
            if generation is not None:
                self._delete(generation)
            if not self._create():
                raise _refusal(path, self._current()[0])
            _taking_over(path, holder)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _create(self) -> bool:
        try:
            self._fs.pipe_file(self._key, self._record, mode="create")   # ifGenerationMatch=0
            return True
        except FileExistsError:
            return False

    def _current(self) -> tuple[dict[str, Any], str | None, float]:
        """The holder, generation and age in seconds of the lock object (generation None: it is gone)."""
        self._fs.invalidate_cache()
        try:
            info = self._fs.info(self._key)
            holder = _parse(self._fs.cat_file(self._key))
        except FileNotFoundError:
            return {}, None, 0.0
        updated = info.get("mtime") or datetime.datetime.now(datetime.timezone.utc)
        return holder, info.get("generation"), (datetime.datetime.now(datetime.timezone.utc) - updated).total_seconds()

    def _delete(self, generation: str) -> None:
        """Deletes the lock object if it still is `generation` (another run may have taken it over meanwhile)."""
        bucket, key = self._key.split("/", 1)
        with contextlib.suppress(FileNotFoundError):
            self._fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(generation))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):   # a missed beat is retried at the next; STALE_S spans many
                self._fs.pipe_file(self._key, self._record)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        holder, generation, _ = self._current()
        if generation is not None and json.dumps(holder).encode() == self._record:
            self._delete(generation)


def acquire(workdir: paths.PathLike) -> LocalLock | BucketLock:
    """The lock of a run directory (which exists), or a RunLockedError naming its holder."""
    path = paths.join(workdir, LOCK_NAME)
    return BucketLock(os.fspath(path)) if paths.is_remote(path) else LocalLock(os.fspath(path))


@contextlib.contextmanager
def hold(workdirs: list[str]) -> Iterator[None]:
    """Every run directory's lock for the block (process 0 takes them; every process is refused alike)."""
    import jax
    locks, error = [], None
    if jax.process_index() == 0:
        try:
            for workdir in workdirs:
                locks.append(acquire(workdir))
        except RunLockedError as e:
            _release(locks)
            locks, error = [], e
    if jax.process_count() > 1:
        error = _agree(error)
    if error is not None:
        raise error
    try:
        yield
    finally:
        _release(locks)


def _release(locks: list[LocalLock | BucketLock]) -> None:
    for lock in reversed(locks):
        lock.release()


def _agree(error: RunLockedError | None) -> RunLockedError | None:
    """Process 0's refusal (or none), on every process."""
    import numpy as np
    from jax.experimental import multihost_utils
    text = "" if error is None else f"{error}\n{error.hint}"
    data = np.frombuffer(text.encode("utf-8")[:_AGREE_BYTES].ljust(_AGREE_BYTES, b"\0"), np.uint8)
    text = bytes(np.asarray(multihost_utils.broadcast_one_to_all(data))).rstrip(b"\0").decode("utf-8", "replace")
    if not text:
        return None
    message, _, hint = text.partition("\n")
    return error or RunLockedError(message, hint=hint)
