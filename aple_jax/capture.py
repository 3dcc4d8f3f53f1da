"""A copy of everything this process writes to stdout and stderr (print, tracebacks, absl, XLA's C++ logs, child
processes), passed through unchanged, for a run's `train.log`."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

JOIN_TIMEOUT_S = 10.0   # a child process that kept the pipe open must not hang the caller


class Captured:
    """The bytes copied so far, in a local temporary file (a run's output can be long)."""

    def __init__(self, buffer: BinaryIO, lock: threading.Lock):
        self._buffer, self._lock = buffer, lock

    def append(self, text: str) -> None:
        """Adds `text` to the copy only (e.g. a traceback for the log, not for the terminal)."""
        with self._lock:
            self._buffer.seek(0, os.SEEK_END)
            self._buffer.write(text.encode("utf-8"))

    def text(self) -> str:
        with self._lock:
            self._buffer.seek(0)
            return self._buffer.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def tee_output() -> Iterator[Captured]:
    """Within the block, file descriptors 1 and 2 write through pipes that copy into `Captured` as well."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    buffer = tempfile.TemporaryFile()
    lock = threading.Lock()
    saved, threads = {}, []
    try:
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            saved[fd] = os.dup(fd)
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(target=_copy, args=(read_end, saved[fd], buffer, lock), daemon=True)
            thread.start()
            threads.append(thread)
        yield Captured(buffer, lock)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)   # the pipe's last write end in this process closes: its reader sees EOF
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
        for original in saved.values():
            os.close(original)


def _copy(read_end: int, original: int, buffer: BinaryIO, lock: threading.Lock) -> None:
    """Copies the pipe to the original descriptor and to the buffer until the pipe closes."""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            with lock:
                buffer.seek(0, os.SEEK_END)
                buffer.write(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(original, view):]
