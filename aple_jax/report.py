"""Results as tables: one run's summary (more in `python -m aple_jax.report RUNS_DIR`)."""
from __future__ import annotations

from typing import Any


def format_run(results: dict[str, Any]) -> str:
    """A Markdown table of one run's accuracies (and HM for base-to-novel)."""
    names = list(results["accuracy"])
    header = "| method | dataset | seed | " + " | ".join(names) + (" | HM |" if "hm" in results else " |")
    rule = "|" + "---|" * (3 + len(names) + ("hm" in results))
    row = (f"| {results['method']} | {results['dataset']} | {results['seed']} | "
           + " | ".join(f"{results['accuracy'][n]:.2f}" for n in names)
           + (f" | {results['hm']:.2f} |" if "hm" in results else " |"))
    return "\n".join([header, rule, row])
