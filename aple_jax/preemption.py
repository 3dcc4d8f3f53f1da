"""SIGTERM (a TPU VM's notice before maintenance or preemption) and SIGINT (Ctrl-C) stop a run cleanly.

Inside `handle_signals()` a signal raises `Interrupted` at once (loading, evaluation: nothing unsaved is lost),
except inside `deferred()` (the training loop), where the handler only sets a flag: the loop finishes its step,
asks `stop_requested(step)` once per step, saves a checkpoint at that step and raises `Interrupted` itself.

Several processes (`jax.distributed`) must stop at the same step: there JAX's preemption service owns SIGTERM (it
catches it and agrees on a step with every process, `multihost_utils.reached_preemption_sync_point`), and SIGINT
is passed on to it as a SIGTERM of this process.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from aple_jax.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    depth = 0                     # nested handle_signals() blocks; the outermost installs the handlers
    deferring = False
    received: int | None = None   # the first signal of this run


def _multiprocess() -> bool:
    """Whether JAX's preemption service runs (processes started with `jax.distributed`)."""
    import jax
    return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


def _handler(signum: int, frame) -> None:
    del frame
    if _State.received is None:
        _State.received = signum
        if signum == signal.SIGINT and _multiprocess():
            os.kill(os.getpid(), signal.SIGTERM)   # to JAX's preemption service: every process stops
    if not _State.deferring:
        raise Interrupted(_State.received)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT stop the run as the module says (in the main thread; elsewhere,
    where Python cannot catch signals, nothing changes). The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _State.depth == 0
    previous = {}
    if outermost:
        _State.received = None
        owned = (signal.SIGINT,) if _multiprocess() else STOP_SIGNALS   # JAX's own SIGTERM handler stays
        previous = {s: signal.signal(s, _handler) for s in owned}
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block (the training loop) a signal only sets the flag that `stop_requested` reads; a signal
    that came when the block ends without stopping raises `Interrupted` then."""
    was, _State.deferring = _State.deferring, True
    try:
        yield
    finally:
        _State.deferring = was
    if _State.received is not None and not was:
        raise Interrupted(_State.received)


def stop_requested(step: int) -> bool:
    """Whether training stops after `step` (called once for every step, in order, by every process)."""
    if _multiprocess():
        from jax.experimental import multihost_utils
        return multihost_utils.reached_preemption_sync_point(step)
    return _State.received is not None


def stop_signal() -> int:
    """The signal that stopped training: this process's own, else (another process's notice) SIGTERM."""
    return _State.received or signal.SIGTERM


def ignore_in_worker(*_) -> None:
    """A data-loader worker process's start: stop signals are its parent's to handle (the parent stops it)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
