"""Official PyTorch prompt checkpoints (Dassl `model.pth.tar-N` of CoOp, CoCoOp, KgCoOp, MaPLe, IVLP, PromptSRC, MMA,
MMRL and PromptKD's student) in and out: `import_prompts` and `export_prompts` are the entry points, docs/migrating.md
the guide.

torch is imported only when a checkpoint is read or written (`dassl.py`).
"""
from __future__ import annotations

from typing import Any

from aple_jax import paths


def is_official_checkpoint(path: paths.PathLike) -> bool:
    """Whether an eval-only source is an official checkpoint file (`model.pth.tar-5`, `model-best.pth.tar`, `.pth`,
    `.pt`) rather than a run directory or a prompts `.npz`."""
    from aple_jax.interop.dassl import is_checkpoint_name
    return not paths.as_path(path).is_dir() and is_checkpoint_name(path)


def checkpoint_meta(path: paths.PathLike) -> dict[str, Any]:
    """The provenance of an official checkpoint (its source, method and prompt shape)."""
    from aple_jax.interop.convert import checkpoint_meta as meta
    return meta(str(path))


def load_prompts(path: paths.PathLike, method: Any, prompts_like: Any) -> Any:
    """The prompt tree of an official checkpoint for a built `Method` (its config and backbone)."""
    from aple_jax.interop import dassl
    from aple_jax.interop.convert import to_prompts
    return to_prompts(dassl.read(path), method.config, method.backbone.cfg, prompts_like)
