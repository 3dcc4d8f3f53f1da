"""Our trained prompts -> an official prompt checkpoint that the method's official `load_model` accepts.

    python -m aple_jax.interop.export_prompts RUN_DIR --out OUT [--epoch N] [--method M]

RUN_DIR is a run directory (its prompts.npz) or a prompts .npz (also one made by import_prompts). OUT is a file
name (`model.pth.tar-5`) or a directory, which gets the official layout `OUT/<ModelName>/model.pth.tar-<N>` and
its `checkpoint` pointer file, so the official test scripts take `--model-dir OUT --load-epoch N`; a run that chose
its epoch by model selection (PromptKD's `kd.select=best_base`, the official `TEST.FINAL_MODEL best_val`) gets
`OUT/<ModelName>/model-best.pth.tar` with that epoch, which the official `load_model` reads without `--load-epoch`.
The file holds the trainable tensors only (and PromptKD's BatchNorm statistics), under the official names and layouts
(fp32; the official `load_state_dict(..., strict=False)` casts them to its precision and keeps its own frozen CLIP).
The method comes from the prompts' provenance, or `--method`; N from `--epoch`, the OUT file name, the imported
checkpoint's epoch or the run's `optim.epochs` (the chosen epoch, with model selection). Local or gs:// paths.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from aple_jax import paths, prompt_files, selection
from aple_jax import prompts as P
from aple_jax.errors import CheckpointError, error_boundary

EPOCH_IN_NAME = re.compile(r"^model\.pth\.tar-(\d+)$")
BEST = "model-best.pth.tar"   # Dassl's copy of the best epoch's checkpoint (TEST.FINAL_MODEL best_val)


def _source(run: paths.PathLike) -> tuple[paths.epath.Path, paths.epath.Path | None]:
    """(the prompts file, the run directory or None) of RUN_DIR."""
    run = paths.as_path(run)
    if run.is_dir():
        npz = run / "prompts.npz"
        if not npz.exists():
            raise CheckpointError(f"run directory {run} holds no prompts.npz", hint="export a finished run")
        return npz, run
    return run, None


def _epoch(out: paths.epath.Path, run_dir: paths.epath.Path | None, epoch: int | None, meta: dict) -> int:
    """--epoch, else the --out name's, the imported checkpoint's or the run's `optim.epochs`."""
    if epoch is not None:
        return epoch
    m = EPOCH_IN_NAME.match(out.name)
    if m:
        return int(m.group(1))
    if isinstance(meta.get("source", {}).get("epoch"), int):
        return meta["source"]["epoch"]
    if run_dir is not None and (run_dir / "config.json").exists():
        return int(paths.read_json(run_dir / "config.json")["optim"]["epochs"])
    raise CheckpointError(f"no epoch for {out}: give --epoch N or an --out named model.pth.tar-N")


def _selected_epoch(run_dir: paths.epath.Path | None) -> int | None:
    """The epoch whose prompts a run with model selection ended with (its prompts.npz); None without selection."""
    record = run_dir / selection.RECORD if run_dir is not None else None
    return paths.read_json(record).get("epoch") if record is not None and record.exists() else None


def export(run: paths.PathLike, out: paths.PathLike, epoch: int | None = None, method: str = "") -> str:
    """Writes the official checkpoint of RUN_DIR's prompts; returns the file written."""
    from aple_jax.interop import convert, dassl
    from aple_jax.interop.mapping import MODEL_NAMES

    if method:
        convert.check_supported(method)
    npz, run_dir = _source(run)
    meta = prompt_files.read_prompts_meta(npz) or {}
    method = method or meta.get("config", {}).get("method", "")
    if not method:
        raise CheckpointError(f"{npz} does not record its method (written before provenance existed)",
                              hint="give --method")
    convert.check_supported(method)
    convert.check_no_plugin(meta.get("config", {}).get("plugin", ""), str(npz))
    out = paths.as_path(out)
    selected = _selected_epoch(run_dir)
    n = _epoch(out, run_dir, selected if epoch is None else epoch, meta)
    name = BEST if selected is not None else f"model.pth.tar-{n}"
    target = out if dassl.is_checkpoint_name(out) else out / MODEL_NAMES[method] / name
    try:
        state_dict = convert.to_state_dict(method, P.unflatten(prompt_files.read_leaves(npz)))
    except KeyError as e:
        raise CheckpointError(f"{npz}: {e.args[0]}", hint="is --method the method that trained it?") from None
    dassl.write(target, state_dict, n, pointer=target != out and selected is None)
    return str(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.interop.export_prompts",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("run", type=paths.user_path, help="a run directory or a prompts .npz")
    parser.add_argument("--out", required=True, type=paths.user_path, help="model.pth.tar-N, or a directory for OUT/<ModelName>/...")
    parser.add_argument("--epoch", type=int, default=None, help="the epoch recorded (default: from --out or the run)")
    parser.add_argument("--method", default="", help="the method (default: the prompts' provenance)")
    with error_boundary():
        a = parser.parse_args(argv)
        print(f"{a.run} -> {export(a.run, a.out, a.epoch, a.method)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
