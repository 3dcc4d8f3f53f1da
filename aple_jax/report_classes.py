"""Per-class results of a run: its confusion matrices (`confusion.npz` beside results.json), per-class accuracy
tables, confusion-matrix PNGs and the classes a method gains or loses against zero-shot CLIP.

results.json holds each evaluation's class names and per-class correct/total counts (`evals.<eval>`, and
`zero_shot.evals.<eval>` when the run compares with zero-shot CLIP); `confusion.npz` holds the (C, C) counts (row:
true class, column: prediction) under the evaluation's name (`zero_shot/<eval>` for zero-shot's). `python -m
aple_jax.report` calls `write_per_class` for every run it reads.
"""
from __future__ import annotations

import io
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from aple_jax import paths
from aple_jax.errors import CheckpointError

CONFUSION_FILE = "confusion.npz"
ZERO_SHOT_PREFIX = "zero_shot/"
LABELLED_CLASSES = 50     # class names on the axes up to this many classes
ANNOTATED_CLASSES = 20    # a count in every cell up to this many classes
SHOWN_CHANGES = 10        # the classes gained and lost most, listed per evaluation


def save_confusions(run_dir: paths.PathLike, results: Mapping[str, Any]) -> None:
    """Every evaluation's confusion matrix (`results`: name -> EvalResult) in one compressed `.npz`, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(r.confusion, np.int64) for name, r in results.items()})
    paths.write_bytes_atomic(paths.join(run_dir, CONFUSION_FILE), buffer.getvalue())


def read_confusions(run_dir: paths.PathLike) -> dict[str, np.ndarray]:
    """The confusion matrices of a run by evaluation name; empty for runs written before they were kept."""
    path = paths.join(run_dir, CONFUSION_FILE)
    if not path.exists():
        return {}
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path} is not a readable .npz ({e})",
                              hint="delete it and results.json, and rerun the run to evaluate it again") from None


def class_rows(evaluation: Mapping[str, Any], zero_shot: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per class of an evaluation in results.json: name, correct, total, accuracy (and zero-shot's
    accuracy and the change, when given); [] for results written before per-class counts were kept."""
    if "per_class_correct" not in evaluation:
        return []
    rows = []
    for i, (name, correct, total) in enumerate(zip(evaluation["classnames"], evaluation["per_class_correct"],
                                                   evaluation["per_class_total"])):
        row = {"class": name, "correct": correct, "total": total, "accuracy": _percent(correct, total)}
        if zero_shot is not None and "per_class_correct" in zero_shot:
            zs = _percent(zero_shot["per_class_correct"][i], zero_shot["per_class_total"][i])
            row.update(zero_shot=zs, change=row["accuracy"] - zs)
        rows.append(row)
    return rows


def _percent(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else float("nan")


def changes(rows: Sequence[dict[str, Any]], count: int = SHOWN_CHANGES) -> tuple[list[dict], list[dict]]:
    """(the classes gained most, the classes lost most) against zero-shot, at most `count` each, largest first."""
    moved = [r for r in rows if "change" in r and r["change"] != 0]
    gained = sorted((r for r in moved if r["change"] > 0), key=lambda r: (-r["change"], r["class"]))
    lost = sorted((r for r in moved if r["change"] < 0), key=lambda r: (r["change"], r["class"]))
    return gained[:count], lost[:count]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per-class accuracy, worst class first (then by name)."""
    with_zs = bool(rows) and "zero_shot" in rows[0]
    header = "| class | correct / total | accuracy |" + (" zero-shot | change |" if with_zs else "")
    rule = "|---|---|---|" + ("---|---|" if with_zs else "")
    lines = [header, rule]
    for r in sorted(rows, key=lambda r: (r["accuracy"], r["class"])):
        cells = [_cell(r["class"]), f"{r['correct']} / {r['total']}", f"{r['accuracy']:.2f}"]
        if with_zs:
            cells += [f"{r['zero_shot']:.2f}", f"{r['change']:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _change_lines(title: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    if not rows:
        return [f"{title}: none."]
    return [f"{title}: " + ", ".join(f"{_cell(r['class'])} ({r['zero_shot']:.1f} -> {r['accuracy']:.1f})"
                                     for r in rows) + "."]


def confusion_order(confusion: np.ndarray) -> np.ndarray:
    """Classes ordered so that those confused with each other sit side by side: a greedy chain over the symmetric
    confusion rates (each class followed by the unplaced class it is most confused with; a new chain starts at the
    unplaced class with the most confusion). O(C^2): instant for 1000 classes."""
    confusion = np.asarray(confusion, np.float64)
    n = len(confusion)
    rates = confusion / np.maximum(confusion.sum(1), 1)[:, None]
    sym = rates + rates.T
    np.fill_diagonal(sym, 0.0)
    weight = sym.sum(1)
    placed = np.zeros(n, bool)
    order: list[int] = []
    while len(order) < n:
        last = order[-1] if order else None
        if last is not None and np.where(placed, 0.0, sym[last]).max() > 0:
            nxt = int(np.argmax(np.where(placed, -1.0, sym[last])))
        else:
            nxt = int(np.argmax(np.where(placed, -1.0, weight)))
        placed[nxt] = True
        order.append(nxt)
    return np.asarray(order)


def plot_confusion(confusion: np.ndarray, classnames: Sequence[str], title: str, path: str) -> None:
    """The row-normalised confusion (the fraction of each true class predicted as each class) in `confusion_order`;
    class names on the axes up to LABELLED_CLASSES classes, counts in the cells up to ANNOTATED_CLASSES. The figure
    grows with the classes up to 20 inches, so 1000 classes stay one readable picture."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    order = confusion_order(confusion)
    counts = np.asarray(confusion)[np.ix_(order, order)]
    rates = counts / np.maximum(counts.sum(1), 1)[:, None]
    n = len(order)
    side = float(np.clip(0.28 * n, 5.0, 20.0))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= LABELLED_CLASSES:
        names = [classnames[i] for i in order]
        ax.set_xticks(np.arange(n), names, rotation=90, fontsize="x-small")
        ax.set_yticks(np.arange(n), names, fontsize="x-small")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= ANNOTATED_CLASSES:
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize="x-small",
                        color="black" if rates[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_slug(run_dir: str, runs_dir: str) -> str:
    """A file-name stem for a run directory: its path below `runs_dir` (of a run beside it: from their common
    folder on, without `..`), or its name when it is `runs_dir`."""
    rel = os.path.relpath(run_dir, runs_dir) if not paths.is_remote(run_dir) else run_dir[len(runs_dir):]
    rel = "/".join(part for part in rel.split("/") if part not in ("..", "."))
    if rel in ("", "."):
        rel = os.path.basename(run_dir.rstrip("/")) or "run"
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", rel).strip("_")


def run_markdown(results: Mapping[str, Any], title: str, pictures: Mapping[str, str]) -> str | None:
    """A run's per-class page: per evaluation, the confusion picture, the classes gained and lost against zero-shot
    and the per-class table; None for a run without per-class counts."""
    zero_shot = (results.get("zero_shot") or {}).get("evals", {})
    parts = [f"# Per-class results: {title}",
             f"{results['method']} on {results['dataset']} ({results['setting']}, seed {results['seed']})."]
    found = False
    for name, evaluation in results["evals"].items():
        rows = class_rows(evaluation, zero_shot.get(name))
        if not rows:
            continue
        found = True
        parts.append(f"## {name}: {evaluation['accuracy']:.2f}% over {evaluation['num_examples']} images, "
                     f"{len(rows)} classes")
        if name in pictures:
            parts.append(f"![confusion {name}]({pictures[name]})")
        if "change" in rows[0]:
            gained, lost = changes(rows)
            parts += _change_lines("Gained most against zero-shot", gained)
            parts += _change_lines("Lost most against zero-shot", lost)
        parts.append(markdown_table(rows))
    return "\n\n".join(parts) + "\n" if found else None


def write_per_class(runs: Sequence[Any], runs_dir: str, out_dir: str, plots: bool = True) -> list[str]:
    """For every run with per-class counts: `per_class/<run>.md` and (with `plots`) `per_class/<run>_<eval>.png`
    under `out_dir` (a local folder); returns the files written, relative to `out_dir`."""
    written = []
    for run in runs:
        results = run.results
        if not any("per_class_correct" in e for e in results.get("evals", {}).values()):
            continue
        slug = run_slug(run.path, runs_dir)
        os.makedirs(os.path.join(out_dir, "per_class"), exist_ok=True)
        pictures = {}
        confusions = read_confusions(run.path) if plots else {}
        for name, matrix in confusions.items():
            if name in results["evals"]:
                pictures[name] = f"{slug}_{re.sub(r'[^A-Za-z0-9.+-]+', '-', name)}.png"
                plot_confusion(matrix, results["evals"][name]["classnames"],
                               f"{results['method']} on {results['dataset']}, {name} (seed {results['seed']})",
                               os.path.join(out_dir, "per_class", pictures[name]))
                written.append(f"per_class/{pictures[name]}")
        page = run_markdown(results, slug, pictures)
        with open(os.path.join(out_dir, "per_class", f"{slug}.md"), "w") as f:
            f.write(page)
        written.append(f"per_class/{slug}.md")
    return written
