"""Sweeps: configs x datasets x seeds as run directories, run here one after another or printed as launch.py commands.

    python -m aple_jax.sweep --configs configs/aple.py --datasets base2new11 --seeds 1,2,3 \\
        --args data=/DATA,weights=/w/ViT-B-16 --runs-dir runs [--override key=value ...] [--print-commands|--dry-run]

Run directories: RUNS_DIR/<config stem>[-<tag>]/<setting>/<dataset>/shots_<k>/seed<s>, where <setting> is base2new,
all, transfer-xd (`:xd`), transfer-dg (`:dg`) or transfer. A directory that holds results.json is skipped.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import shlex
import sys
from types import ModuleType
from typing import Any, Sequence

import ml_collections

from aple_jax import paths
from aple_jax.data.names import canonical_name
from aple_jax.report import dataset_name, differing_keys, format_run, read_json
from aple_jax.world.datasets import parse_name as parse_world_name
from configs.common import CROSS_DATASET_TARGETS, IMAGENET_VARIANTS

DATASET_SHORTCUTS = {"base2new11": ("ImageNet",) + CROSS_DATASET_TARGETS,
                     "world3": ("world:WorldObjects", "world:WorldCounts", "world:WorldScenes")}


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: what launch.py would be given, and the config it resolves to."""
    config_file: str
    arg: str                      # the `:arguments` of the config file
    overrides: tuple[str, ...]    # `key=value`, as `--config.key=value`
    workdir: str
    config: ml_collections.ConfigDict

    @property
    def finished(self) -> bool:
        return paths.join(self.workdir, "results.json").exists()

    def command(self) -> str:
        """The launch.py command line of this run."""
        words = ["python", "launch.py", "--config", f"{self.config_file}:{self.arg}", "--workdir", self.workdir]
        words += [f"--config.{o}" for o in self.overrides]
        return " ".join(shlex.quote(w) for w in words)


def load_config_module(path: str) -> ModuleType:
    """A configs/*.py file as a module (it must define get_config(arg))."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"sweep_config_{_stem(path)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config(arg)")
    return module


def expand_datasets(text: str) -> list[str]:
    """A comma-separated dataset list; `base2new11` stands for the 11 base-to-novel datasets, `world3` for the
    world's three base-to-novel datasets (docs/world.md); names are checked."""
    out: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        out += DATASET_SHORTCUTS.get(item, (item,))
    for name in out:
        if name.startswith("world:"):
            parse_world_name(name[len("world:"):])   # raises naming the world's datasets
        elif not name.startswith("tfds:"):
            canonical_name(name)    # raises UnknownDatasetError naming the known datasets
    return out


def apply_override(c: ml_collections.ConfigDict, item: str) -> None:
    """`key.sub=value` set on the config, typed like the current value (as launch.py's `--config.key=value`)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not key=value")
    *parents, last = key.split(".")
    node = c
    for p in parents:
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise KeyError(f"override {item!r}: the config has no field {key!r}")
        node = node[p]
    if last not in node:
        raise KeyError(f"override {item!r}: the config has no field {key!r}")
    node[last] = parse_value(node[last], text, key)


def parse_value(current: Any, text: str, key: str) -> Any:
    """`text` converted to the type of the field's `current` value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"override {key}={text!r}: expected true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, str):
        return text
    try:
        return type(current)(text) if isinstance(current, (int, float)) else ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"override {key}={text!r}: expected a value like {current!r}") from None


def setting_dir(c: ml_collections.ConfigDict) -> str:
    """The setting part of a run directory; transfer runs say which target list (`:xd` or `:dg`) they test."""
    if c.setting != "transfer":
        return c.setting
    targets = tuple(c.dataset.eval_datasets)[1:]
    return {CROSS_DATASET_TARGETS: "transfer-xd", IMAGENET_VARIANTS: "transfer-dg"}.get(targets, "transfer")


def run_dir(runs_dir: str, config_file: str, c: ml_collections.ConfigDict) -> str:
    """RUNS_DIR/<config stem>[-<tag>]/<setting>/<dataset, as tables name it>/shots_<k>/seed<s>."""
    name = _stem(config_file) + (f"-{c.tag}" if c.tag else "")
    return os.path.join(runs_dir, name, setting_dir(c), dataset_name(c.dataset.name), f"shots_{c.dataset.shots}",
                        f"seed{c.seed}")


def plan(config_files: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], args: str,
         overrides: Sequence[str], runs_dir: str) -> list[PlannedRun]:
    """Every config x dataset x seed, resolved; no datasets = each config's own dataset.

    Override values may name the run's `{seed}` and `{dataset}`, e.g. eval_only_from=runs/x/seed{seed}.
    """
    runs = []
    for path in config_files:
        module = load_config_module(path)
        for dataset in datasets or [""]:
            for seed in seeds:
                arg = ",".join(filter(None, [f"dataset={dataset}" if dataset else "", f"seed={seed}", args]))
                c = module.get_config(arg)
                items = tuple(o.replace("{seed}", str(seed)).replace("{dataset}", dataset) for o in overrides)
                for o in items:
                    apply_override(c, o)
                runs.append(PlannedRun(path, arg, items, run_dir(runs_dir, path, c), c))
    workdirs = [r.workdir for r in runs]
    duplicates = sorted({w for w in workdirs if workdirs.count(w) > 1})
    if duplicates:
        raise ValueError(f"several runs of the sweep share a run directory: {duplicates}; give variants a tag")
    return runs


def check_finished(run: PlannedRun) -> None:
    """A finished run directory must hold results of the same config, else skipping it would hide a change."""
    saved = read_json(os.path.join(run.workdir, "results.json")).get("config", {})
    diff = differing_keys(saved, run.config.to_dict(), ignore=("dataset.name",))   # the dir fixes the dataset
    if diff:
        raise ValueError(f"{run.workdir} holds results of another config (differs in {diff}); give this variant "
                         f"a tag (--override tag=NAME) or use another --runs-dir")


def execute(runs: list[PlannedRun], dry_run: bool) -> None:
    """Runs the sweep in this process, one run after another, skipping finished ones."""
    for i, r in enumerate(runs, 1):
        if r.finished:
            print(f"[{i}/{len(runs)}] skip {r.workdir}: results.json exists (finished)", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {'would run' if dry_run else 'run'} {r.workdir}", flush=True)
        if dry_run:
            continue
        from aple_jax.run import run
        try:
            results = run(r.config, r.workdir)
        except Exception as e:
            e.add_note(f"in sweep run {i}/{len(runs)}: {r.command()}")
            raise
        print(format_run(results), flush=True)


def print_commands(runs: list[PlannedRun]) -> None:
    """One launch.py command per unfinished run on stdout; skips are reported on stderr."""
    for i, r in enumerate(runs, 1):
        if r.finished:
            print(f"[{i}/{len(runs)}] skip {r.workdir}: results.json exists (finished)", file=sys.stderr)
        else:
            print(r.command())


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", "--config", required=True, help="comma-separated configs/*.py files")
    parser.add_argument("--datasets", default="",
                        help="comma-separated dataset names, `base2new11` for the 11 base-to-novel datasets; "
                             "default: each config's own dataset")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--args", default="", help="more `:arguments` for every run, e.g. data=/DATA,weights=/w")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config field for every run (repeatable), e.g. tag=ctx8; {seed} and {dataset} in "
                             "the value become the run's")
    parser.add_argument("--runs-dir", required=True, help="root of the run directories")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print one launch.py command per unfinished run instead of running")
    mode.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    a = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds {a.seeds!r}: expected comma-separated integers like 1,2,3")
    if not seeds or min(seeds) < 1:
        parser.error(f"--seeds {a.seeds!r}: expected seeds >= 1 (the configs read seed=0 as 'keep the default')")
    try:
        runs = plan([p for p in a.configs.split(",") if p], expand_datasets(a.datasets), seeds, a.args, a.override,
                    a.runs_dir)
        for r in runs:
            if r.finished:
                check_finished(r)
    except (OSError, KeyError, ValueError) as e:
        parser.error(e.args[0] if e.args else repr(e))
    if a.print_commands:
        print_commands(runs)
    else:
        execute(runs, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
