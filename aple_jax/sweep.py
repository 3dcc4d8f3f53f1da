"""Sweeps: configs x datasets x seeds as run directories, run here one after another or printed as launch.py commands.

    python -m aple_jax.sweep --configs configs/aple.py --datasets base2new11 --seeds 1,2,3 \\
        --args data=/DATA,weights=/w/ViT-B-16 --runs-dir runs [--override key=value ...] [--print-commands|--dry-run]
        [--variant 'NAME:key=value;key=value' ...] [--pack-seeds]

Run directories: RUNS_DIR/<config stem>[-<tag>]/<setting>/<dataset>/shots_<k>/seed<s>, where <setting> is base2new,
all, transfer-xd (`:xd`), transfer-dg (`:dg`) or transfer. A directory that holds results.json is skipped.
Each run's whole output also goes to `train.log` in its directory. A failing run does not stop the sweep (unless
--stop-on-error): the failed runs are listed at the end and the exit status is 1; rerunning finishes what is missing.
SIGTERM or Ctrl-C is passed on to the running run(s), which save the step under way; no further run starts, the
summary lists the interrupted runs and the exit status is 143 or 130 (docs/errors.md); rerunning resumes them.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, Sequence

import ml_collections

from aple_jax import config_schema, paths, preemption
from aple_jax.capture import tee_output
from aple_jax.config_files import apply_override, load_config_module
from aple_jax.data.names import canonical_name
from aple_jax.errors import CheckpointError, ConfigError, Interrupted, error_boundary
from aple_jax.progress import format_duration
from aple_jax.prompt_files import flatten_config
from aple_jax.reporting.groups import differing_keys
from aple_jax.reporting.runs import dataset_name, read_json
from aple_jax.reporting.tables import format_run
from aple_jax.world.datasets import SUITE as WORLD_SUITE
from aple_jax.world.datasets import parse_name as parse_world_name
from configs.common import CROSS_DATASET_TARGETS, IMAGENET_VARIANTS, WORLD_DG_TARGETS, WORLD_XD_TARGETS

DATASET_SHORTCUTS = {"base2new11": ("ImageNet",) + CROSS_DATASET_TARGETS,
                     "world3": ("world:WorldObjects", "world:WorldCounts", "world:WorldScenes"),
                     "world11": tuple(f"world:{name}" for name in WORLD_SUITE)}


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


def expand_datasets(text: str) -> list[str]:
    """A comma-separated dataset list; `base2new11` stands for the 11 base-to-novel datasets, `world11` for the
    world's suite and `world3` for its three plain two-attribute datasets (docs/world.md); names are checked."""
    out: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        out += DATASET_SHORTCUTS.get(item, (item,))
    for name in out:
        if name.startswith("world:"):
            parse_world_name(name[len("world:"):])   # raises naming the world's datasets
        elif not name.startswith("tfds:"):
            canonical_name(name)    # raises UnknownDatasetError naming the known datasets
    return out


def setting_dir(c: ml_collections.ConfigDict) -> str:
    """The setting part of a run directory; transfer runs say which target list (`:xd` or `:dg`) they test."""
    if c.setting != "transfer":
        return c.setting
    targets = tuple(c.dataset.eval_datasets)[1:]
    return {CROSS_DATASET_TARGETS: "transfer-xd", IMAGENET_VARIANTS: "transfer-dg", WORLD_XD_TARGETS: "transfer-xd",
            WORLD_DG_TARGETS: "transfer-dg"}.get(targets, "transfer")


def run_dir(runs_dir: str, config_file: str, c: ml_collections.ConfigDict) -> str:
    """RUNS_DIR/<config stem>[+<plugin>][-<tag>]/<setting>/<dataset, as tables name it>/shots_<k>/seed<s>."""
    name = _stem(config_file) + (f"+{c.plugin}" if c.get("plugin") else "") + (f"-{c.tag}" if c.tag else "")
    return os.path.join(runs_dir, name, setting_dir(c), dataset_name(c.dataset.name), f"shots_{c.dataset.shots}",
                        f"seed{c.seed}")


def parse_variant(text: str) -> tuple[str, ...]:
    """`--variant "NAME:key=value;key=value"` -> the overrides `tag=NAME`, `key=value`, ... (`NAME:` alone: the
    config as it is, tagged NAME)."""
    name, sep, body = text.partition(":")
    if not sep or not name.strip() or any(c in name for c in "/=; "):
        raise ConfigError(f"--variant {text!r}: expected NAME:key=value[;key=value...] with a plain NAME "
                          f"(it becomes the runs' tag), e.g. ctx8:prompts.text.n_ctx=8")
    return (f"tag={name.strip()}",) + tuple(o.strip() for o in body.split(";") if o.strip())


def plan(config_files: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], args: str,
         overrides: Sequence[str], runs_dir: str, variants: Sequence[str] = ()) -> list[PlannedRun]:
    """Every config x variant x dataset x seed, resolved; no datasets = each config's own dataset.

    Override values may name the run's `{seed}`, `{dataset}` and `{config}` (the config file's stem), e.g.
    eval_only_from=runs/{config}/transfer-xd/ImageNet/shots_16/seed{seed}. Each
    variant (`NAME:key=value;...`) adds its overrides and the tag NAME to every run it makes.
    """
    runs = []
    for path in config_files:
        module = load_config_module(path)
        for variant in [parse_variant(v) for v in variants] or [()]:
            for dataset in datasets or [""]:
                for seed in seeds:
                    arg = ",".join(filter(None, [f"dataset={dataset}" if dataset else "", f"seed={seed}", args]))
                    c = module.get_config(arg)
                    items = tuple(o.replace("{seed}", str(seed)).replace("{dataset}", dataset)
                                  .replace("{config}", _stem(path)) for o in (*overrides, *variant))
                    for o in items:
                        apply_override(c, o)
                    config_schema.validate(c, check_paths=False)   # the paths may exist only where the runs run
                    runs.append(PlannedRun(path, arg, items, run_dir(runs_dir, path, c), c))
    workdirs = [r.workdir for r in runs]
    duplicates = sorted({w for w in workdirs if workdirs.count(w) > 1})
    if duplicates:
        raise ConfigError(f"several runs of the sweep share a run directory: {duplicates}; give variants a tag")
    return runs


def check_finished(run: PlannedRun) -> None:
    """A finished run directory must hold results of the same config, else skipping it would hide a change."""
    saved = read_json(os.path.join(run.workdir, "results.json")).get("config", {})
    diff = differing_keys(saved, run.config.to_dict(), ignore=("dataset.name",))   # the dir fixes the dataset
    if diff:
        raise CheckpointError(f"{run.workdir} holds results of another config (differs in {diff}); give this variant "
                         f"a tag (--override tag=NAME) or use another --runs-dir")


def seed_groups(runs: list[PlannedRun], pack_seeds: bool) -> list[list[PlannedRun]]:
    """The sweep's units of work: each run alone, or with `pack_seeds` the seeds of one config x dataset together
    (one program, as `:seeds=1+2+3`); a group's runs differ only in their seed."""
    if not pack_seeds:
        return [[r] for r in runs]
    groups: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault((r.config_file, os.path.dirname(r.workdir)), []).append(r)
    for group in groups.values():
        first = flatten_config(dict(group[0].config.to_dict(), seed=0))
        for r in group[1:]:
            other = flatten_config(dict(r.config.to_dict(), seed=0))
            diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            if diff:
                raise ConfigError(f"--pack-seeds: the seeds of {os.path.dirname(r.workdir)} differ in more than the "
                                  f"seed ({diff}, e.g. an override naming {{seed}}); run them without --pack-seeds")
    return list(groups.values())


def execute(runs: list[PlannedRun], dry_run: bool, stop_on_error: bool = False, pack_seeds: bool = False,
            jobs: int = 1) -> list[tuple[PlannedRun, str]]:
    """Runs the sweep, one run (or one group of packed seeds) after another in this process, or `jobs` at a time
    in child processes; skips finished ones and returns the failed runs with their errors. With `stop_on_error`
    the first failure is raised instead."""
    cores = core_sets(jobs, stop_on_error)
    groups = seed_groups(runs, pack_seeds)
    todo = []
    for i, group in enumerate(groups, 1):
        where, name = f"{i}/{len(groups)}", _group_name(group)
        if all(r.finished for r in group):
            print(f"[{where}] skip {name}: results.json exists (finished)", flush=True)
        elif dry_run:
            print(f"[{where}] would run {name}", flush=True)
        else:
            todo.append((where, group))
    if dry_run:
        return []
    tally = Tally(len(todo), sum(1 for _, group in todo for r in group if not r.finished))
    stopped = run_serial(todo, tally, stop_on_error) if jobs == 1 else run_parallel(todo, cores, tally)
    print_summary(runs, tally, time.monotonic() - tally.start)
    if stopped is not None:
        raise Interrupted(stopped, where=tuple(r.workdir for r, _ in tally.interrupted),
                          note=f"stopped the sweep: {len(tally.interrupted)} run(s) interrupted (a run in training "
                               f"saved the step under way), {tally.pending - tally.ran} not started")
    return tally.failed


def run_serial(todo: list[tuple[str, list[PlannedRun]]], tally: "Tally", stop_on_error: bool) -> int | None:
    """Runs the units of `todo` one after another in this process; a stop signal ends the run under way (which
    saves its step) and the sweep: returns that signal, or None."""
    with preemption.handle_signals():
        where, group = "", []
        try:
            for where, group in todo:
                tally.started(where, group)
                results, error = run_logged(group, where)
                if error is not None and stop_on_error:
                    raise error
                tally.ended(where, group, results, None if error is None else _one_line(error))
        except Interrupted as e:
            if tally.running(where):
                tally.ended(where, group, None, str(e), interrupted=True)
            return e.signum
    return None


class Tally:
    """The sweep's progress lines: each unit of work started and ended, elapsed time, ETA, and the failures."""

    def __init__(self, todo: int, pending: int):
        self.todo, self.pending, self.start, self.done, self.ran = todo, pending, time.monotonic(), 0, 0
        self.failed: list[tuple[PlannedRun, str]] = []
        self.interrupted: list[tuple[PlannedRun, str]] = []
        self._began: dict[str, tuple[float, list[PlannedRun]]] = {}

    def started(self, where: str, group: list[PlannedRun], note: str = "") -> None:
        self._began[where] = time.monotonic(), [r for r in group if not r.finished]
        print(f"[{where}] run {_group_name(group)}{note} ({_clock(self.start, self.done, self.todo)})", flush=True)

    def running(self, where: str) -> bool:
        return where in self._began

    def ended(self, where: str, group: list[PlannedRun], results: Any, error: str | None,
              interrupted: bool = False) -> None:
        began, pending = self._began.pop(where)
        self.done, self.ran = self.done + 1, self.ran + len(pending)
        took = format_duration(time.monotonic() - began)
        if interrupted:
            self.interrupted += [(r, error) for r in pending]
            print(f"[{where}] INTERRUPTED {_group_name(group)} after {took}: {error}", flush=True)
            return
        if error is None:
            print(format_run(results), flush=True)
            print(f"[{where}] finished {_group_name(group)} in {took} ({_clock(self.start, self.done, self.todo)})",
                  flush=True)
            return
        self.failed += [(r, error) for r in pending]
        print(f"[{where}] FAILED {_group_name(group)} after {took}: {error} (its train.log holds the traceback; "
              f"{_clock(self.start, self.done, self.todo)})", flush=True)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def core_sets(jobs: int, stop_on_error: bool = False) -> list[tuple[int, ...]]:
    """This process's CPU cores dealt into `jobs` disjoint sets, one per parallel job (empty sets where the system
    cannot pin a process to cores)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected a number of parallel runs >= 1")
    if jobs > 1 and stop_on_error:
        raise ConfigError(f"--stop-on-error shows a failing run's traceback here, so it runs one run at a time; "
                          f"drop --jobs {jobs} or --stop-on-error")
    if not hasattr(os, "sched_getaffinity"):
        return [()] * jobs
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise ConfigError(f"--jobs {jobs}: this process may use {len(cores)} CPU cores; expected at most "
                          f"{len(cores)} parallel runs (each gets cores of its own)")
    return [tuple(cores[i::jobs]) for i in range(jobs)]


def jax_backend() -> str:
    """The platform JAX picks on this host ("cpu", "gpu", "tpu"), asked of a short-lived child process so that this
    one claims no accelerator."""
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                           text=True, timeout=300, check=False)
    return probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else "cpu"


def check_jobs_backend(jobs: int) -> None:
    """Parallel jobs are for CPU hosts: on an accelerator every job would claim all of it (JAX preallocates most
    of a GPU's memory per process), so the second would fail or both crawl."""
    if jobs > 1 and (backend := jax_backend()) != "cpu":
        raise ConfigError(f"--jobs {jobs}: this host runs JAX on {backend}, where each parallel job would claim the "
                          f"whole accelerator; --jobs is for CPU hosts. Drop it: one run at a time uses every device")


def run_parallel(todo: list[tuple[str, list[PlannedRun]]], cores: list[tuple[int, ...]],
                 tally: Tally) -> int | None:
    """Runs the units of `todo` as many at a time as there are core sets, each in a fresh child process pinned to
    one set. The parent prints the start, result and end lines; a job's own output goes to a live log on local
    disk while it runs (named in its start line, for `tail -f`) and to its runs' train.log at the end.

    A stop signal is passed on to every running child (each saves its step); no further unit starts. Returns that
    signal, or None."""
    context = multiprocessing.get_context("spawn")   # a fresh interpreter: JAX must not be forked
    free, queue = list(cores), list(todo)
    running: dict[concurrent.futures.Future, tuple[str, list[PlannedRun], tuple[int, ...], Any]] = {}
    with tempfile.TemporaryDirectory(prefix="aple_jax_sweep_") as live_dir, _passed_on() as stopped:
        while queue or running:
            while queue and free and not stopped:
                (where, group), job_cores = queue.pop(0), free.pop(0)
                live_log = os.path.join(live_dir, f"job{where.split('/')[0]}.log")
                on = f" on cores {','.join(map(str, job_cores))}" if job_cores else ""
                tally.started(where, group, f"{on} (live output: {live_log})")
                pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
                future = pool.submit(run_in_child, group, where, job_cores, live_log)
                running[future] = (where, group, job_cores, pool)
            if stopped:
                queue.clear()
            if running:
                _collect(running, free, tally, stopped)
    return stopped[0] if stopped else None


@contextlib.contextmanager
def _passed_on() -> Iterator[list[int]]:
    """Within the block a stop signal is passed on to this process's children (the running jobs) and recorded in
    the list it yields (in the main thread; elsewhere nothing changes)."""
    stopped: list[int] = []

    def forward(signum: int, frame) -> None:
        del frame
        if not stopped:
            stopped.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return
    previous = {s: signal.signal(s, forward) for s in preemption.STOP_SIGNALS}
    try:
        yield stopped
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _collect(running: dict[concurrent.futures.Future, tuple], free: list[tuple[int, ...]], tally: Tally,
             stopped: list[int]) -> None:
    """Waits for at least one running job to end, reports it and frees its cores."""
    finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
    for future in finished:
        where, group, job_cores, pool = running.pop(future)
        pool.shutdown()
        free.append(job_cores)
        try:
            results, error, interrupted = future.result()
        except Exception as e:   # noqa: BLE001 -- the child died (e.g. killed for memory): a failed run
            results, error = None, f"the run's process ended abnormally ({_one_line(e)})"
            interrupted = bool(stopped)   # or the signal passed on reached it before it could save anything
        tally.ended(where, group, results, error, interrupted)


def run_in_child(group: list[PlannedRun], where: str, cores: tuple[int, ...],
                 live_log: str) -> tuple[Any, str | None, bool]:
    """A parallel job's body, in its child process: pinned to `cores`, its output into `live_log` instead of the
    terminal, the run logged as in a serial sweep; returns its results or its error's first line, and whether a
    stop signal interrupted it."""
    with preemption.handle_signals():
        if cores:
            os.sched_setaffinity(0, cores)   # before JAX starts: XLA sizes its thread pools by the cores it may use
        live = os.open(live_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(live, 1)
        os.dup2(live, 2)
        try:
            results, error = run_logged(group, where, f"on CPU cores {list(cores)}" if cores else "")
        except Interrupted as e:
            return None, str(e), True
    return results, None if error is None else _one_line(error), False


def _group_name(group: list[PlannedRun]) -> str:
    if len(group) == 1:
        return group[0].workdir
    return f"{os.path.dirname(group[0].workdir)}/seed{{{','.join(str(r.config.seed) for r in group)}}}"


def run_logged(group: list[PlannedRun], where: str, note: str = "") -> tuple[Any, Exception | None]:
    """One run (or packed seeds) with its whole output (and the traceback of a failure) copied to `train.log` in
    each run directory, appended to the logs of earlier attempts; the log is written at the end, so the directory
    may be a bucket."""
    from aple_jax import distill
    from aple_jax.run import run, run_seeds
    results, error = None, None
    with tee_output() as captured:
        try:
            for r in group:
                captured.append(f"sweep run {where} ({time.strftime('%Y-%m-%d %H:%M:%S')}"
                                f"{', ' + note if note else ''}): {r.command()}\n")
            try:
                if len(group) == 1:
                    results = run(group[0].config, group[0].workdir)
                else:
                    config_schema.validate(group[0].config)
                    results = run_seeds(distill.prepare_seeds([(r.config, r.workdir) for r in group]))
            except Exception as e:   # noqa: BLE001 -- reported, logged and listed; the sweep goes on
                e.add_note(f"in sweep run {where}: {group[0].command()}")
                captured.append(traceback.format_exc())
                error = e
            except Interrupted as e:
                captured.append(f"interrupted: {e}\n")
                raise
        finally:
            for r in group:
                log = paths.join(r.workdir, "train.log")
                earlier = log.read_text() if log.exists() else ""
                paths.write_text_atomic(log, earlier + captured.text())
    return results, error


def _clock(start: float, done: int, todo: int) -> str:
    """`elapsed 2:03, ETA 6:09`: the ETA from the mean time of the runs done so far."""
    elapsed = time.monotonic() - start
    eta = f", ETA {format_duration(elapsed / done * (todo - done))}" if done else ""
    return f"elapsed {format_duration(elapsed)}{eta}"


def print_summary(runs: list[PlannedRun], tally: Tally, seconds: float) -> None:
    """How many runs finished, were skipped, failed, were interrupted or not started; each failed or interrupted
    run with its error and log."""
    failed, interrupted = tally.failed, tally.interrupted
    not_started = tally.pending - tally.ran
    stopped = f", {len(interrupted)} interrupted, {not_started} not started" if interrupted or not_started else ""
    print(f"sweep: {tally.ran - len(failed) - len(interrupted)} finished, {len(runs) - tally.pending} skipped "
          f"(finished before), {len(failed)} failed{stopped}, in {format_duration(seconds)}", flush=True)
    for title, rows in (("failed runs (rerun the sweep to retry them; finished runs are skipped):", failed),
                        ("interrupted runs (rerun the sweep to resume them from their checkpoints):", interrupted)):
        if rows:
            print(title, flush=True)
            for r, message in rows:
                print(f"  {r.workdir}: {message} (log: {paths.join(r.workdir, 'train.log')})", flush=True)


def print_commands(runs: list[PlannedRun]) -> None:
    """One launch.py command per unfinished run on stdout; skips are reported on stderr."""
    for i, r in enumerate(runs, 1):
        if r.finished:
            print(f"[{i}/{len(runs)}] skip {r.workdir}: results.json exists (finished)", file=sys.stderr)
        else:
            print(r.command())


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` as integers >= 1."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers like 1,2,3") from None
    if not seeds or min(seeds) < 1:
        raise ConfigError(f"--seeds {text!r}: expected seeds >= 1 (the configs read seed=0 as 'keep the default')")
    return seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aple_jax.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", "--config", required=True, help="comma-separated configs/*.py files")
    parser.add_argument("--datasets", default="",
                        help="comma-separated dataset names, `base2new11` for the 11 base-to-novel datasets; "
                             "default: each config's own dataset")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--args", default="", help="more `:arguments` for every run, e.g. data=/DATA,weights=/w")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config field for every run (repeatable), e.g. tag=ctx8; {seed}, {dataset} and "
                             "{config} (the config file's stem) in the value become the run's")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                        help="run every config as this variant too (repeatable; each is tagged NAME), e.g. "
                             "--variant 'ctx1:prompts.text.n_ctx=1' --variant 'ctx2:prompts.text.n_ctx=2'")
    parser.add_argument("--runs-dir", required=True, type=paths.user_path, help="root of the run directories")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true",
                      help="print one launch.py command per unfinished run instead of running")
    mode.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    parser.add_argument("--pack-seeds", action="store_true",
                        help="train the seeds of each config x dataset together in one program (one compilation, "
                             "the frozen CLIP shared); each seed keeps its own run directory and results")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs (or groups of packed seeds) at a time, each in its own process pinned to its "
                             "share of the CPU cores (default 1: one after another in this process); for CPU "
                             "hosts, where small models use one core each better than two; refused on GPU/TPU hosts")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="stop at the first failing run with its traceback (default: go on, list failures)")
    with error_boundary():
        a = parser.parse_args(argv)
        core_sets(a.jobs, a.stop_on_error)
        check_jobs_backend(a.jobs)
        seeds = parse_seeds(a.seeds)
        runs = plan([p for p in a.configs.split(",") if p], expand_datasets(a.datasets), seeds, a.args, a.override,
                    a.runs_dir, a.variant)
        for r in runs:
            if r.finished:
                check_finished(r)
        if a.print_commands:
            print_commands(runs)
            return 0
        return 1 if execute(runs, a.dry_run, a.stop_on_error, a.pack_seeds, a.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
