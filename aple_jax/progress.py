"""Training progress that fits where it goes: tqdm's bar on a terminal; plain lines in a log file (one every
`every_seconds` and at each epoch and phase end), both with phase, step, loss, accuracy, rate and ETA."""
from __future__ import annotations

import sys
import time
from typing import TextIO

import jax
from tqdm.auto import tqdm


def make_progress(total_steps: int, initial_step: int = 0, enabled: bool = True, every_seconds: float = 30.0,
                  stream: TextIO | None = None) -> BarProgress | LineProgress | None:
    """The bar when `stream` (default stdout) is a terminal, plain lines otherwise; None when disabled or on any
    process but 0 of a multi-host run (those print warnings and errors only)."""
    if not enabled or jax.process_index() != 0:
        return None
    stream = stream or sys.stdout
    if stream.isatty():
        return BarProgress(total_steps, initial_step, stream)
    return LineProgress(total_steps, initial_step, stream, every_seconds)


def format_duration(seconds: float) -> str:
    """`1:02:03` or `2:03`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BarProgress:
    """tqdm's bar: the phase as its description, epoch, loss and accuracy as its postfix."""

    def __init__(self, total_steps: int, initial_step: int, stream: TextIO):
        self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, file=stream)

    def start_phase(self, name: str, index: int, step: int, epochs: int = 0) -> None:
        self.bar.set_description(f"phase {index + 1} {name}")

    def advance(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def metrics(self, epoch: int | None, loss: float, accuracy: float | None) -> None:
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", acc=f"{100 * (accuracy or 0.0):.1f}")

    def end_epoch(self, epoch: int, step: int) -> None:
        pass   # the bar shows the epoch already

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    """One plain line every `every_seconds` and at each epoch end (the last epoch of a phase says so)."""

    def __init__(self, total_steps: int, initial_step: int, stream: TextIO, every_seconds: float):
        self.total, self.step, self.stream, self.every = total_steps, initial_step, stream, every_seconds
        self.phase, self.epochs, self.epoch = "", 0, None
        self.loss: float | None = None
        self.accuracy: float | None = None
        self.first: tuple[int, float] | None = None   # (step, time) of the phase's first step: compiles are before
        self.last_line = time.monotonic()

    def start_phase(self, name: str, index: int, step: int, epochs: int = 0) -> None:
        self.phase, self.epochs, self.step = f"phase {index + 1} {name}", epochs, step
        self.epoch = self.loss = self.accuracy = self.first = None   # each phase compiles anew: its own rate

    def advance(self, step: int) -> None:
        self.step = step
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        if now - self.last_line >= self.every:
            self._print()

    def metrics(self, epoch: int | None, loss: float, accuracy: float | None) -> None:
        self.epoch, self.loss, self.accuracy = epoch, loss, accuracy

    def end_epoch(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step
        self._print("phase end" if self.epochs and epoch >= self.epochs else "epoch end")

    def close(self) -> None:
        pass

    def line(self, event: str = "") -> str:
        """`phase 1 ctx | epoch 2/6 | step 40/120 (33%) | loss 0.5123 | acc 81.2% | 3.1 steps/s | ETA 0:26`."""
        parts = [self.phase or "training"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{self.epochs}" if self.epochs else f"epoch {self.epoch}")
        parts.append(f"step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.accuracy is not None:
            parts.append(f"acc {100 * self.accuracy:.1f}%")
        rate = self._rate()
        if rate:
            parts += [f"{rate:.2f} steps/s", f"ETA {format_duration((self.total - self.step) / rate)}"]
        return " | ".join(parts) + (f" | {event}" if event else "")

    def _rate(self) -> float | None:
        if self.first is None:
            return None
        steps, seconds = self.step - self.first[0], time.monotonic() - self.first[1]
        return steps / seconds if steps > 0 and seconds > 0 else None

    def _print(self, event: str = "") -> None:
        print(self.line(event), file=self.stream, flush=True)
        self.last_line = time.monotonic()

