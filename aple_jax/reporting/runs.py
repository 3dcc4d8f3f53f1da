"""Finding and reading runs: every run directory's results.json below a runs directory, or the runs an aggregate
results.json records (aple_jax/aggregate_input.py), each with the key its seeds are grouped by."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, NamedTuple, Sequence

from aple_jax import aggregate_input, paths
from aple_jax.data.errors import UnknownDatasetError
from aple_jax.distill import TEACHER_DIR
from aple_jax.data.names import canonical_name
from aple_jax.errors import ReportError

REPORT_KIND = aggregate_input.AGGREGATE_KIND      # marks our aggregate results.json so that a later scan skips it
TEACHER_TAG = "teacher"   # the rows of distilled runs' teachers
REQUIRED_KEYS = ("method", "dataset", "setting", "seed", "shots", "backbone", "tag", "prompt_length", "accuracy",
                 "config")
_TABLE_NAMES = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD"}


def dataset_name(name: str) -> str:
    """The field's table name of a dataset spelling ("dtd" -> "DTD", "world:WorldObjects" -> "WorldObjects");
    names the data package lacks pass through."""
    if name.startswith("world:"):
        return name[len("world:"):]
    try:
        name = canonical_name(name)
    except UnknownDatasetError:
        return name
    return _TABLE_NAMES.get(name, name)


class GroupKey(NamedTuple):
    method: str
    tag: str
    backbone: str
    setting: str
    shots: int
    dataset: str
    evals: tuple[str, ...]   # base/new, all, or the transfer targets
    transductive: bool = False   # trained on unlabeled images of classes it is tested on (results.json)


@dataclasses.dataclass(frozen=True)
class Run:
    path: str                 # the run directory (for a run rebuilt from an aggregate: the name the aggregate records)
    results: dict[str, Any]
    name: str                 # what a report records: the run directory relative to its runs directory (run_name)

    @property
    def key(self) -> GroupKey:
        r = self.results
        evals = tuple(dataset_name(e) if r["setting"] == "transfer" else e for e in r["accuracy"])
        return GroupKey(r["method"], r["tag"], r["backbone"], r["setting"], r["shots"], dataset_name(r["dataset"]),
                        evals, bool(r.get("transductive", False)))

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracies under the report's eval names (transfer targets as table names)."""
        return dict(zip(self.key.evals, self.results["accuracy"].values()))


def load_runs(source: str | Sequence[str], skip_unfinished: bool = False) -> list[Run]:
    """The runs below a runs directory, or rebuilt from an aggregate results.json (aple_jax/aggregate_input.py); of
    several such sources together, named relative to the first (the folder of an aggregate given first)."""
    sources = source_list(source)
    base = parent_dir(sources[0]) if paths.as_path(sources[0]).is_file() else sources[0]
    runs = []
    for one in sources:
        if paths.as_path(one).is_file():   # the names it records, as they are (absolute in aggregates before)
            runs += [Run(p, r, p) for p, r in aggregate_input.runs_from_aggregate(one, read_json(one))]
        else:
            runs += [dataclasses.replace(r, name=run_name(r.path, base)) for r in find_runs(one, skip_unfinished)]
    return runs


def run_name(path: str, runs_dir: str) -> str:
    """A run directory as a report records it: relative to `runs_dir`, so that the aggregate reads the same wherever
    the runs directory lies (as it is where the two are not on the same storage)."""
    if paths.is_remote(path) != paths.is_remote(runs_dir):
        return path
    strip = lambda p: p.split("://", 1)[-1]
    return os.path.relpath(strip(path), strip(runs_dir))


def find_runs(runs_dir: str, skip_unfinished: bool = False) -> list[Run]:
    """Every run's results.json below `runs_dir`, named relative to it; unfinished run directories raise unless
    skipped."""
    if not paths.as_path(runs_dir).is_dir():
        raise ReportError(f"runs directory {runs_dir} does not exist")
    runs, unfinished, teachers = [], [], set()
    for path, dirs, files in _walk(os.fspath(runs_dir)):
        started = "config.json" in files or "checkpoints" in dirs
        dirs[:] = sorted(d for d in dirs if d != "checkpoints")
        if TEACHER_DIR in dirs and (started or any(d.startswith("seed") for d in dirs)):
            teachers.add(os.path.join(path, TEACHER_DIR))
        if "results.json" in files:
            results = _read_results(os.path.join(path, "results.json"))
            if results is not None:
                if path in teachers:
                    results = as_teacher(results)
                runs.append(Run(path, results, run_name(path, runs_dir)))
        elif started:
            unfinished.append(path)
    if unfinished and not skip_unfinished:
        raise ReportError("run directories without results.json (the run has not finished: still running, stopped "
                          "or crashed; re-run its command to resume, or pass --skip-unfinished): "
                          + ", ".join(unfinished))
    if not runs:
        raise ReportError(f"no results.json found below {runs_dir}; expected run directories written by launch.py "
                          f"or `python -m aple_jax.sweep`")
    return runs


def as_teacher(results: dict[str, Any]) -> dict[str, Any]:
    """A distilled run's teacher (`teacher/` inside a student's run, or beside its packed seeds) as a row of its
    own, tagged `teacher`: not one of its method's study runs, whose config it does not share."""
    tag = f"{results['tag']}-{TEACHER_TAG}" if results["tag"] else TEACHER_TAG
    return {**results, "tag": tag, "config": {**results["config"], "tag": tag}}


def _walk(top: str) -> Iterable[tuple[str, list[str], list[str]]]:
    """`os.walk` (top-down; prune by editing `dirs`) over a local or gs:// tree, one listing per directory."""
    entries = paths.list_dir(top)
    dirs = sorted(name for name, is_dir in entries if is_dir)
    files = sorted(name for name, is_dir in entries if not is_dir)
    yield top, dirs, files
    for d in dirs:
        yield from _walk(os.path.join(top, d))


def read_json(path: str) -> dict[str, Any]:
    """A JSON object from a file (local or gs://), or a ReportError naming the file."""
    try:
        data = json.loads(paths.as_path(path).read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e}): a half-written or edited file?",
                          hint=f"delete {path} and rerun that run (it evaluates again from its checkpoints), or "
                               f"pass --skip-unfinished after deleting it") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a {type(data).__name__}; expected a JSON object")
    return data


def _read_results(path: str) -> dict[str, Any] | None:
    """A run's results, or None for an aggregate written by `python -m aple_jax.report`."""
    results = read_json(path)
    if results.get("kind") == REPORT_KIND:
        return None
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ReportError(f"{path} lacks keys {missing}; expected a run's results.json as aple_jax.run writes it")
    return results


def source_list(runs_dir: str | Sequence[str]) -> list[str]:
    """One source (a runs directory or an aggregate), or several, as a list."""
    return [runs_dir] if isinstance(runs_dir, str) else list(runs_dir)


def parent_dir(path: str) -> str:
    return str(paths.as_path(path).parent)
