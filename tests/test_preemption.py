"""SIGTERM and Ctrl-C through the real command line: the step under way is saved, loader workers stop, one line
says how to resume, the exit status is 128 + the signal's number, and the resumed run ends bit-identical."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

from aple_jax import checkpoint, paths, train
from aple_jax.errors import EXIT_SIGINT, EXIT_SIGTERM, CheckpointError
from aple_jax.prompt_files import PROMPTS_META_KEY
from aple_jax.run import run
from tests.cli import REPO
from tests.helpers import result_line, tiny_config
from tests.signal_worker import descendants

# :tiny CoOp: 80 training images at batch 16, 5 steps per epoch, 4 epochs; two grain worker processes.
WORKERS = 2


def signalled_launch(workdir, step: int, sig: str, *args: str) -> subprocess.CompletedProcess:
    """launch.py on `configs/coop.py:tiny` with loader workers, sent `sig` right after training step `step`."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    env.pop("APLE_JAX_TRACEBACK", None)
    return subprocess.run([sys.executable, "tests/signal_worker.py", str(step), sig, "launch.py", "--config",
                           "configs/coop.py:tiny", "--workdir", str(workdir), "--config.progress=False",
                           f"--config.dataset.num_workers={WORKERS}", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def alive(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """The pids still running (not zombies) after up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        live = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        live.append(pid)
            except OSError:
                pass
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)


def assert_stopped(proc: subprocess.CompletedProcess, status: int, workdir, step: int) -> None:
    """The documented status, no traceback, the resume line, a checkpoint at `step`, no worker left running."""
    report = f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == status, report
    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(lines) == 1, report
    assert f"at step {step}: checkpoint saved in {workdir}" in lines[0], report
    assert "to resume, run the same command again: " in lines[0] and f"--workdir {workdir}" in lines[0], report
    assert not os.path.exists(os.path.join(workdir, "run.lock"))   # released on the way out
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == step, steps
    workers = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("DESCENDANTS "))[12:])
    assert len(workers) >= WORKERS, report             # the loader's workers existed when the signal came
    assert alive(workers) == [], report


def _prompts(workdir) -> dict[str, np.ndarray]:
    with np.load(os.path.join(workdir, "prompts.npz")) as f:
        return {k: f[k] for k in f.files if k != PROMPTS_META_KEY}


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_that_step_and_the_rerun_ends_bit_identical(tmp_path, monkeypatch):
    config = tiny_config("coop")
    full = run(config, str(tmp_path / "full"))
    cut = tmp_path / "cut"
    assert_stopped(signalled_launch(cut, 7, "SIGTERM"), EXIT_SIGTERM, cut, 7)   # epoch 2, its 2nd step
    assert not (cut / "results.json").exists()

    restored = []
    real = checkpoint.RunCheckpoints.restore_newest
    monkeypatch.setattr(checkpoint.RunCheckpoints, "restore_newest",
                        lambda self, like: restored.append(real(self, like)) or restored[-1])
    resumed = run(tiny_config("coop", dataset__num_workers=WORKERS), str(cut))   # the iterator state has workers
    assert [r[0] for r in restored] == [7]
    assert restored[0][1]["epoch"] == 1 and restored[0][1]["epoch_step"] == 2
    full_prompts, cut_prompts = _prompts(tmp_path / "full"), _prompts(cut)
    assert full_prompts.keys() == cut_prompts.keys()
    for key in full_prompts:
        np.testing.assert_array_equal(cut_prompts[key], full_prompts[key], err_msg=key)
    assert resumed["accuracy"] == full["accuracy"]


@pytest.mark.slow
def test_ctrl_c_at_an_epoch_end_saves_after_the_epoch_without_a_traceback(tmp_path):
    """The epoch's last step: the epoch-end work runs and its checkpoint is the one saved."""
    assert_stopped(signalled_launch(tmp_path, 10, "SIGINT"), EXIT_SIGINT, tmp_path, 10)
    assert EXIT_SIGINT == 128 + signal.SIGINT and EXIT_SIGTERM == 128 + signal.SIGTERM
    with checkpoint.RunCheckpoints(str(tmp_path)) as ckpt:
        meta = ckpt.restore_meta(10)
    assert (meta["epoch"], meta["epoch_step"]) == (2, 0)


@pytest.mark.slow
def test_a_signal_during_evaluation_stops_at_once_with_the_status(tmp_path):
    """Nothing to save: the one line says so, the loader's workers are gone, the lock is released."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    env.pop("APLE_JAX_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "tests/signal_worker.py", "eval", "SIGTERM", "launch.py", "--config",
                           "configs/zeroshot.py:tiny", "--workdir", str(tmp_path), "--config.eval_batch_size=8",
                           f"--config.dataset.num_workers={WORKERS}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == EXIT_SIGTERM and "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(lines) == 1 and "SIGTERM stopped the run outside training (nothing new to save)" in lines[0], report
    assert sorted(os.listdir(tmp_path)) == ["config.json"], report   # no results.json, no lock
    workers = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("DESCENDANTS "))[12:])
    assert len(workers) >= WORKERS and alive(workers) == [], report


def test_resuming_with_another_worker_count_is_refused_naming_the_one_saved(tmp_path):
    config = dict(optim__epochs=1, checkpoint_every_steps=1)
    with pytest.raises(train.Preempted):
        run(tiny_config("coop", dataset__num_workers=WORKERS, **config), str(tmp_path), stop_at_step=2)
    with pytest.raises(CheckpointError, match=f"saved with dataset.num_workers={WORKERS}; this run has 0") as e:
        run(tiny_config("coop", **config), str(tmp_path))
    assert f"--config.dataset.num_workers={WORKERS}" in e.value.hint


def two_processes(gcs_emulator, workdir: str, *args: str) -> list[tuple[int, dict, str]]:
    """tests/run_worker.py as processes 0 and 1 of one :tiny CoOp run: (exit status, RESULT, stderr) of each;
    `args` go to process 0 only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **gcs_emulator.env, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)   # a cache hit in one process only can outwait Gloo's 30 s setup
    procs = [subprocess.Popen([sys.executable, "tests/run_worker.py", workdir, "coop", "--set=log_every=1",
                               *(args if pid == 0 else ()), "--distributed", f"127.0.0.1:{port}", "2", str(pid)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, result_line(out), err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.slow
@pytest.mark.gcs
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_in_a_bucket(gcs_emulator, gcs):
    full = two_processes(gcs_emulator, f"{gcs}/full")
    assert [status for status, _, _ in full] == [0, 0], full[0][2][-3000:] + full[1][2][-3000:]
    cut = two_processes(gcs_emulator, f"{gcs}/cut", "--sigterm-at=3")
    report = "\n".join(err[-3000:] for _, _, err in cut)
    assert [status for status, _, _ in cut] == [EXIT_SIGTERM, EXIT_SIGTERM], report
    steps = {result["interrupted"] for _, result, _ in cut}
    assert len(steps) == 1, report                       # both processes stopped at the same step ...
    step = steps.pop()
    assert 3 < step < 20, report                         # ... agreed after the signal, before the run's end
    saved = sorted(int(n.rstrip("/").rsplit("/", 1)[-1]) for n in fsspec.filesystem("gs").ls(
        f"{gcs}/cut/checkpoints".removeprefix("gs://")) if n.rstrip("/").rsplit("/", 1)[-1].isdigit())
    assert saved[-1] == step, saved
    assert not paths.join(f"{gcs}/cut", "run.lock").exists()
    resumed = two_processes(gcs_emulator, f"{gcs}/cut")
    assert [status for status, _, _ in resumed] == [0, 0], resumed[0][2][-3000:]
    assert resumed[0][1]["prompts"] == full[0][1]["prompts"]


def sweep_argv(runs_dir, *extra: str) -> list[str]:
    return ["-m", "aple_jax.sweep", "--configs", "configs/coop.py", "--seeds", "1,2", "--args", "tiny",
            "--runs-dir", str(runs_dir), "--override", "progress=False", "--override",
            f"dataset.num_workers={WORKERS}", *extra]


def seed_dirs(runs_dir) -> dict[int, str]:
    return {int(d[-1]): d for d in glob.glob(os.path.join(runs_dir, "coop", "*", "*", "*", "seed*"))}


def newest_step(workdir) -> int | None:
    steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()] \
        if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    return max(steps, default=None)


def assert_sweep_stopped(proc, runs_dir, interrupted: int, not_started: int) -> dict[int, str]:
    report = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == EXIT_SIGTERM, report
    assert "Traceback" not in proc.stderr, report
    assert (f"sweep: 0 finished, 0 skipped (finished before), 0 failed, {interrupted} interrupted, "
            f"{not_started} not started") in proc.stdout, report
    lines = [line for line in proc.stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(lines) == 1 and "SIGTERM stopped the sweep" in lines[0] and "-m aple_jax.sweep" in lines[0], report
    dirs = seed_dirs(runs_dir)
    listed = proc.stdout.split("interrupted runs (rerun the sweep to resume them from their checkpoints):")[1]
    for seed in range(1, interrupted + 1):
        assert dirs[seed] in listed, report
        assert not os.path.exists(os.path.join(dirs[seed], "run.lock")), report
        assert "interrupted: SIGTERM stopped training at step" in open(os.path.join(dirs[seed], "train.log")).read()
    return dirs


@pytest.mark.slow
def test_a_serial_sweep_passes_sigterm_to_its_run_and_starts_no_other(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "tests/signal_worker.py", "7", "SIGTERM", *sweep_argv(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    dirs = assert_sweep_stopped(proc, tmp_path, interrupted=1, not_started=1)
    assert newest_step(dirs[1]) == 7
    assert 2 not in dirs or newest_step(dirs[2]) is None    # the second run never started
    workers = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("DESCENDANTS "))[12:])
    assert workers and alive(workers) == []


@pytest.mark.slow
def test_a_parallel_sweep_passes_sigterm_to_every_child_and_each_saves(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    sweep = subprocess.Popen([sys.executable, *sweep_argv(tmp_path, "--jobs", "2", "--override", "optim.epochs=40",
                                                          "--override", "checkpoint_every_steps=1")],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and sweep.poll() is None:
            dirs = seed_dirs(tmp_path)
            if len(dirs) == 2 and all(newest_step(d) for d in dirs.values()):
                break                                          # both children are training
            time.sleep(0.5)
        below = descendants(sweep.pid)
        sweep.send_signal(signal.SIGTERM)
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    proc = subprocess.CompletedProcess(sweep.args, sweep.returncode, out, err)
    dirs = assert_sweep_stopped(proc, tmp_path, interrupted=2, not_started=0)
    assert all(0 < newest_step(d) < 200 for d in dirs.values())
    assert len(below) >= 2 * (1 + WORKERS) and alive(below) == []   # the children and their loader workers


@pytest.mark.slow
@pytest.mark.gcs
def test_ctrl_c_on_one_of_two_processes_is_passed_on_and_both_stop_at_one_step(gcs_emulator, gcs):
    cut = two_processes(gcs_emulator, gcs, "--sigterm-at=3", "--signal=SIGINT")
    report = "\n".join(err[-3000:] for _, _, err in cut)
    assert [status for status, _, _ in cut] == [EXIT_SIGINT, EXIT_SIGTERM], report   # its own Ctrl-C; the notice
    assert "Traceback" not in report
    steps = {result["interrupted"] for _, result, _ in cut}
    assert len(steps) == 1 and 3 < min(steps) < 20, report
    with checkpoint.RunCheckpoints(gcs) as ckpt:
        assert ckpt.latest_step() == steps.pop()
