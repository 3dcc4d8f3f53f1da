"""Results as tables and plots: one run's summary, and `python -m aple_jax.report RUNS_DIR` over many runs.

Reading runs, grouping seeds, the aggregate, tables and plots live in aple_jax/reporting/; the rules the aggregate
follows are in aple_jax/reporting/summary.py. This module writes a report, or `--compare A,B`, from the command line.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, Sequence

from aple_jax import compare, paths
from aple_jax.errors import ReportError, error_boundary
from aple_jax.report_classes import write_per_class
from aple_jax.reporting.groups import group_runs
from aple_jax.reporting.plots import slug, write_plots
from aple_jax.reporting.runs import load_runs, parent_dir, source_list
from aple_jax.reporting.summary import summarize
from aple_jax.reporting.tables import markdown


def report(runs_dir: str | Sequence[str], out_dir: str | None = None, reference: bool = False,
           skip_unfinished: bool = False, plots: bool = True) -> dict[str, Any]:
    """Reads every run below `runs_dir` (or several runs directories and aggregates, their runs together), writes
    results.md, results.json and PNGs to `out_dir` (default: the first); returns the summary."""
    sources = source_list(runs_dir)
    for source in sources:
        if paths.as_path(source).is_file() and (out_dir is None or _same_path(out_dir, parent_dir(source))):
            raise ReportError(f"a report rebuilt from the aggregate {source} would overwrite it",
                              hint="pass --out with another directory")
    out_dir = out_dir or sources[0]
    groups = group_runs(load_runs(sources, skip_unfinished))
    summary = summarize(sources, groups, reference)
    runs_dir = sources[0]
    paths.make_dirs(out_dir)
    with tempfile.TemporaryDirectory() as scratch:      # matplotlib writes local files; a bucket gets uploads
        local = scratch if paths.is_remote(out_dir) else out_dir
        summary["plots"] = write_plots(groups, summary, local) if plots else []
        summary["per_class"] = write_per_class([r for g in groups for r in g.runs], runs_dir, local, plots)
        if local != out_dir:
            for name in summary["plots"] + summary["per_class"]:
                with open(os.path.join(local, name), "rb") as f:
                    paths.write_bytes_atomic(paths.join(out_dir, name), f.read())
    paths.write_json_atomic(paths.join(out_dir, "results.json"), summary)
    paths.write_text_atomic(paths.join(out_dir, "results.md"), markdown(summary, reference))
    return summary


def _same_path(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) if not paths.is_remote(a) else a.rstrip("/") == b.rstrip("/")


def compare_report(source: str | Sequence[str], pair: str, out_dir: str | None = None,
                   skip_unfinished: bool = False) -> str:
    """`--compare A,B`: the paired differences as Markdown (returned), and compare_A_B.json / .md in `out_dir`
    (default: the (first) runs directory, or the directory of an aggregate results.json)."""
    a, b = compare.parse_pair(pair)
    sources = source_list(source)
    result = compare.compare(group_runs(load_runs(sources, skip_unfinished)), a, b)
    result["source"] = " + ".join(sources)
    md = compare.markdown(result)
    source = sources[0]
    out_dir = out_dir or (parent_dir(source) if paths.as_path(source).is_file() else source)
    paths.make_dirs(out_dir)
    name = f"compare_{slug(a)}_{slug(b)}"
    paths.write_json_atomic(paths.join(out_dir, f"{name}.json"), result)
    paths.write_text_atomic(paths.join(out_dir, f"{name}.md"), md)
    return md + f"\n-> {paths.join(out_dir, name + '.json')}, {paths.join(out_dir, name + '.md')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=paths.user_path, nargs="+",
                        help="directory searched recursively for run directories (results.json), or an "
                             "aggregate results.json this command wrote (its per-seed values); several: their runs "
                             "together (e.g. an old study's aggregate and the runs of new methods)")
    parser.add_argument("--out", type=paths.user_path,
                        help="where results.md, results.json and the PNGs go (default: RUNS_DIR)")
    parser.add_argument("--reference", action="store_true", help="add the published rows of protocol.md §6")
    parser.add_argument("--skip-unfinished", action="store_true",
                        help="leave out run directories without results.json instead of failing")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--compare", metavar="A,B",
                        help="instead of the report: the paired difference A - B (method or method-tag) per dataset "
                             "and on the average, with 95%% intervals and a verdict; printed, and written as "
                             "compare_A_B.json/.md")
    with error_boundary():
        args = parser.parse_args(argv)
        if args.compare:
            print(compare_report(args.runs_dir, args.compare, args.out, args.skip_unfinished))
            return 0
        summary = report(args.runs_dir, args.out, args.reference, args.skip_unfinished, not args.no_plots)
    out = args.out or args.runs_dir[0]
    print(f"{summary['num_runs']} runs, {len(summary['groups'])} groups -> {os.path.join(out, 'results.md')}, "
          f"{os.path.join(out, 'results.json')}, {len(summary['plots'])} plots")
    for table, envs in summary["environments"].items():
        if envs["mixed"]:
            print(f"warning: the {table} table mixes {len(envs['environments'])} environments (they differ in "
                  f"{', '.join(envs['differing'])}); results.md lists them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
