"""Model selection after every epoch by one evaluation set's accuracy (PromptKD's official `TEST.FINAL_MODEL
best_val`, whose val split is the base classes' test set): the best epoch's prompts are kept in the run directory
beside its record, so a resumed run keeps the best it had, and the run ends with them."""
from __future__ import annotations

from typing import Any

from aple_jax import paths, prompt_files

PROMPTS, RECORD = "best_prompts.npz", "best.json"


def best_accuracy(workdir: paths.PathLike) -> float | None:
    path = paths.join(workdir, RECORD)
    return paths.read_json(path)["accuracy"] if path.exists() else None


def update(workdir: paths.PathLike, split: str, phase: str, epoch: int, step: int, accuracy: float,
           prompts: Any) -> bool:
    """Keeps `prompts` when `accuracy` on `split` beats the best so far (strictly, as Dassl); True if it did."""
    best = best_accuracy(workdir)
    if best is not None and accuracy <= best:
        return False
    prompt_files.save_prompts(paths.join(workdir, PROMPTS), prompts)    # written before the record names it
    paths.write_json_atomic(paths.join(workdir, RECORD), {"by": split, "phase": phase, "epoch": epoch, "step": step,
                                                          "accuracy": accuracy})
    return True


def chosen(workdir: paths.PathLike, prompts_like: Any) -> Any:
    """The best epoch's prompts (the given ones when no epoch was recorded)."""
    if best_accuracy(workdir) is None:
        return prompts_like
    return prompt_files.read_prompts(paths.join(workdir, PROMPTS), prompts_like)


def record(workdir: paths.PathLike, split: str) -> dict[str, Any]:
    """What results.json says of the selection: the set it used, the epoch it chose and that epoch's accuracy."""
    path = paths.join(workdir, RECORD)
    return paths.read_json(path) if path.exists() else {"by": split, "epoch": None}
