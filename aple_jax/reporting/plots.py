"""PNGs: bars of the base-to-novel and transfer tables, accuracy against prompt length, and training curves."""
from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from aple_jax.reporting.groups import Group
from aple_jax.reporting.summary import TRANSFER_TABLES, TransferTable, dataset_order, label, system_label

_HISTORY_META = ("phase", "epoch", "step")
ERROR_BARS = "95% interval of the mean over seeds (Student t)"


def slug(*parts: Any) -> str:
    """A file name's part from `parts` (a PNG's, or `--compare`'s compare_A_B)."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(p)).strip("-") for p in parts if str(p))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_base2new_bars(summary: dict[str, Any], path: str) -> None:
    """Grouped bars: Base, Novel and HM per dataset (plus the average), one bar per method."""
    plt = _pyplot()
    systems = summary["base2new"]
    names = sorted({d for s in systems for d in s["datasets"]}, key=dataset_order) + ["Average"]
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.9 * len(names) * max(1, len(systems)) ** 0.5), 9),
                             sharex=True)
    for ax, metric, title in zip(axes, ("base", "new", "hm"), ("Base accuracy", "Novel accuracy", "HM")):
        series = {_bar_label(s): [{**s["datasets"], "Average": s["average"]}.get(d, {}).get(metric, np.nan)
                                  for d in names] for s in systems}
        errors = None if metric == "hm" else {
            _bar_label(s): [_interval(s["average"][metric], (s["average"][f"{metric}_per_seed"] or {}).get("ci95"))
                            if d == "Average" else _interval(s["datasets"][d][metric], s["datasets"][d][f"{metric}_ci95"])
                            if d in s["datasets"] else None for d in names] for s in systems}
        _grouped_bars(ax, names, series, f"{title} (%)", errors)
    axes[0].set_title(f"error bars: {ERROR_BARS}; HM (HM of the means) has none", fontsize="small")
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),   # beside, never over, the bars
                   title="error bars: 95% interval", title_fontsize="small")
    axes[-1].set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _interval(mean: float, ci95: Sequence[float] | None) -> tuple[float, float] | None:
    """An error bar (below, above) around `mean`; None without an interval."""
    return None if ci95 is None else (mean - ci95[0], ci95[1] - mean)


def _grouped_bars(ax, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                  errors: dict[str, Sequence[tuple[float, float] | None]] | None = None) -> None:
    """One group of bars per name, one bar per series (NaN: no bar), with (below, above) error bars if given."""
    width, x = 0.8 / len(series), np.arange(len(names))
    for i, (name, ys) in enumerate(series.items()):
        yerr = None
        if errors is not None:
            bars = [e or (0.0, 0.0) for e in errors[name]]
            yerr = np.array(bars, dtype=float).T
        ax.bar(x + (i - (len(series) - 1) / 2) * width, ys, width, label=name, yerr=yerr, capsize=2,
               error_kw={"elinewidth": 0.8})
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_transfer_bars(rows: list[dict[str, Any]], table: TransferTable, path: str) -> None:
    """Grouped bars: accuracy on the source and on each target (plus their mean), one bar per method."""
    plt = _pyplot()
    names = [table.source, *table.targets, *(["Average"] if table.average else [])]
    series, errors = {}, {}
    for r in rows:
        name = f"{system_label(r)} ({r['backbone']}, {r['shots']} shots)"
        series[name] = [r["average"]["accuracy"] if n == "Average" else r["accuracy"].get(n, {}).get("mean", np.nan)
                        for n in names]
        errors[name] = [_interval(r["average"]["accuracy"], r["average"]["per_seed"]["ci95"]) if n == "Average"
                        else _interval(r["accuracy"][n]["mean"], r["accuracy"][n]["ci95"]) if n in r["accuracy"]
                        else None for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * max(1, len(rows)) ** 0.5), 4))
    _grouped_bars(ax, names, series, "accuracy (%)", errors)
    ax.set_title(f"{table.title}\n(error bars: {ERROR_BARS})", fontsize="medium")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="error bars: 95% interval",
              title_fontsize="small")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _bar_label(s: dict[str, Any]) -> str:
    a = s["average"]
    average = "" if a["complete"] else f"; average of {len(a['datasets'])} datasets"
    return f"{system_label(s)} ({s['backbone']}, {s['shots']} shots{average})"


def prompt_length_points(groups: list[Group], summary: dict[str, Any]) -> dict[tuple, dict[str, list[tuple]]]:
    """(setting, dataset, backbone, shots) -> method -> [(text, vision, {eval: mean})], complete averages included."""
    points: dict[tuple, dict[str, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        k, pl = g.key, g.prompt_length
        values = {e: s.mean for e, s in g.stats.items()} | ({"HM": g.hm} if g.hm is not None else {})
        points[(k.setting, k.dataset, k.backbone, k.shots)][k.method].append((pl["text"], pl["vision"], values))
    lengths = {(g.key.method, g.key.tag, g.key.backbone, g.key.shots): g.prompt_length for g in groups
               if g.key.setting == "base2new"}
    for s in summary["base2new"]:
        if s["average"]["complete"]:
            pl = lengths[(s["method"], s["tag"], s["backbone"], s["shots"])]
            a = s["average"]
            points[("base2new", "average", s["backbone"], s["shots"])][s["method"]].append(
                (pl["text"], pl["vision"], {"base": a["base"], "new": a["new"], "HM": a["hm"]}))
    return {k: v for k, v in points.items() if any(len({p[:2] for p in ps}) > 1 for ps in v.values())}


def plot_prompt_length(where: tuple, by_method: dict[str, list[tuple]], path: str) -> None:
    """Mean accuracy against the number of prompt tokens, one line per method per eval."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    setting, dataset, backbone, shots = where
    fig, ax = plt.subplots(figsize=(6, 4))
    axes_used = set()
    for i, (method, ps) in enumerate(sorted(by_method.items())):
        axis = 0 if len({p[0] for p in ps}) > 1 else 1
        axes_used.add(("text", "vision")[axis])
        ps = sorted(ps, key=lambda p: p[axis])
        for j, e in enumerate(ps[0][2]):
            ax.plot([p[axis] for p in ps], [p[2].get(e, np.nan) for p in ps], marker="o", color=f"C{i % 10}",
                    linestyle=("-", "--", ":", "-.")[j % 4], label=f"{method} {e}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(" / ".join(sorted(axes_used)) + " prompt tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{dataset} ({setting}, {backbone}, {shots} shots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_history(group: Group) -> list[dict[str, Any]]:
    """The seeds' per-epoch evaluations averaged, over the (phase, epoch) points every seed has."""
    histories = [r.results.get("history") or [] for r in group.runs]
    if not all(histories):
        return []
    keyed = [{(h["phase"], h["epoch"]): h for h in hist} for hist in histories]
    out = []
    for h in histories[0]:
        point = (h["phase"], h["epoch"])
        if all(point in k for k in keyed):
            evals = [e for e in h if e not in _HISTORY_META]
            out.append({"phase": h["phase"], "epoch": h["epoch"],
                        **{e: float(np.mean([k[point][e] for k in keyed])) for e in evals}})
    return out


def history_epochs(hist: list[dict[str, Any]]) -> list[int]:
    """Each evaluation's epoch counted over all phases (a phase's last epoch is always evaluated, so its last entry
    says how many epochs it had)."""
    out, offset = [], 0
    for i, h in enumerate(hist):
        out.append(offset + h["epoch"])
        if i + 1 < len(hist) and hist[i + 1]["phase"] != h["phase"]:
            offset += h["epoch"]
    return out


def plot_history(title: str, histories: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Accuracy of each eval against the epoch (counted over all phases), one panel per dataset."""
    plt = _pyplot()
    n = len(histories)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (dataset, hist) in zip(axes.flat, histories.items()):
        x = history_epochs(hist)
        for e in [k for k in hist[0] if k not in _HISTORY_META]:
            ax.plot(x, [h[e] for h in hist], marker=".", label=e)
        for i in range(1, len(hist)):
            if hist[i]["phase"] != hist[i - 1]["phase"]:
                ax.axvline(x[i - 1] + 0.5, color="grey", linestyle=":")
        ax.set_title(f"{dataset} (phases {' > '.join(dict.fromkeys(h['phase'] for h in hist))})", fontsize="small")
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(groups: list[Group], summary: dict[str, Any], out_dir: str) -> list[str]:
    """Every PNG this report can draw; returns their file names (relative to `out_dir`)."""
    names = []
    if summary["base2new"]:
        names.append("base2new_bars.png")
        plot_base2new_bars(summary, os.path.join(out_dir, names[-1]))
    for table in TRANSFER_TABLES:
        if summary[table.key]:
            names.append(f"{table.key}_bars.png")
            plot_transfer_bars(summary[table.key], table, os.path.join(out_dir, names[-1]))
    for where, by_method in sorted(prompt_length_points(groups, summary).items()):
        names.append(f"prompt_length_{slug(*where)}.png")
        plot_prompt_length(where, by_method, os.path.join(out_dir, names[-1]))
    systems: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for g in groups:
        hist = mean_history(g)
        if hist:
            k = g.key
            systems[(k.method, k.tag, k.backbone, k.setting, k.shots, k.transductive)][k.dataset] = hist
    for (method, tag, backbone, setting, shots, transductive), histories in sorted(systems.items()):
        names.append(f"history_{slug(method, tag, backbone, setting, shots)}.png")
        plot_history(f"{label(method, tag, transductive)}: {setting}, {backbone}, {shots} shots", histories,
                     os.path.join(out_dir, names[-1]))
    return names
