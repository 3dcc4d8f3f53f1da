"""Run logs: a progress bar (phase, step, loss, accuracy, rate, ETA), metrics as JSONL and TensorBoard."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
from tqdm.auto import tqdm


class MetricWriter:
    """Writes `metrics.jsonl` and TensorBoard events in the run directory (process 0 only)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool | None = None,
                 progress: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        self.bar = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if progress:
            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def start_phase(self, name: str, index: int, step: int) -> None:
        if self.bar is not None:
            self.bar.set_description(f"phase {index + 1} {name}")

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"}
        for key, value in scalars.items():
            self.tb.add_scalar(f"{metrics.get('phase', 'eval')}/{key}", value, step)
        if self.bar is not None and "loss" in metrics:
            self.bar.set_postfix(epoch=metrics.get("epoch"), loss=f"{metrics['loss']:.4f}",
                                 acc=f"{100 * metrics.get('accuracy', 0.0):.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
