"""One writer per run directory: a second run is refused naming the holder, a stale lock is taken over, the lock
goes at the end (finished, failed or stopped), on local disk and in a bucket."""
import json
import os
import socket
import subprocess
import time

import pytest

from aple_jax import paths, run_lock, train
from aple_jax.errors import RunLockedError
from aple_jax.run import run
from tests import cli
from tests.helpers import tiny_config


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stale_record(host: str | None = None) -> bytes:
    return json.dumps({"host": host or socket.gethostname(), "pid": dead_pid(), "pid_start": "1",
                       "started": "2026-01-01 00:00:00 UTC"}).encode()


def test_a_second_run_on_a_locked_directory_is_one_error_line_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = run_lock.acquire(str(workdir))   # this process holds it, as a first run would
    try:
        case = cli.Case("locked", cli.launch("--config", "configs/zeroshot.py:tiny", "--workdir", str(workdir)),
                        f"is in use by another run (process {os.getpid()} on host {socket.gethostname()}, started ")
        cli.assert_user_error(case, cli.run_case(case))
        assert os.listdir(workdir) == ["run.lock"]   # nothing else was written
    finally:
        lock.release()
    assert os.listdir(workdir) == []


def test_a_stale_local_lock_is_taken_over_and_every_run_releases_its_lock(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "run.lock").write_bytes(stale_record())   # left by a run killed with SIGKILL: nobody flocks it
    run(tiny_config("zeroshot"), str(workdir))
    assert "run lock " + str(workdir / "run.lock") + ": taking over from process " in capsys.readouterr().out
    assert not (workdir / "run.lock").exists()
    with pytest.raises(train.Preempted):                  # a run ended by an exception releases it too
        run(tiny_config("coop", optim__epochs=1), str(tmp_path / "cut"), stop_at_step=1)
    assert not (tmp_path / "cut" / "run.lock").exists()


def test_a_lock_whose_holder_is_alive_is_not_taken_over_even_when_its_file_is_reopened(tmp_path):
    lock = run_lock.acquire(str(tmp_path))
    try:
        with pytest.raises(RunLockedError, match=f"process {os.getpid()} on host"):
            run_lock.acquire(str(tmp_path))
        with pytest.raises(RunLockedError, match="in use by another run"):
            run(tiny_config("zeroshot"), str(tmp_path))
    finally:
        lock.release()


@pytest.mark.gcs
def test_bucket_lock_refuses_a_second_run_and_takes_over_a_stale_one(gcs, capsys, monkeypatch):
    lock = run_lock.acquire(gcs)
    try:
        with pytest.raises(RunLockedError, match=f"run directory {gcs} is in use by another run \\(process "
                                                 f"{os.getpid()} on host {socket.gethostname()}, started "):
            run(tiny_config("zeroshot"), gcs)
    finally:
        lock.release()
    assert not paths.join(gcs, "run.lock").exists()

    paths.join(gcs, "run.lock").write_bytes(stale_record())            # a dead process of this host
    run(tiny_config("zeroshot"), gcs)
    assert f"run lock {gcs}/run.lock: taking over from process " in capsys.readouterr().out
    assert not paths.join(gcs, "run.lock").exists()

    other = f"{gcs}/other"
    paths.join(other, "run.lock").write_bytes(stale_record(host="another-host"))
    with pytest.raises(RunLockedError, match="on host another-host") as refused:   # its heartbeat is fresh
        run_lock.acquire(other)
    assert "the lock is taken over once it is 10 minutes old" in refused.value.hint
    monkeypatch.setattr(run_lock, "STALE_S", 0.0)                       # ... until it is STALE_S old
    run_lock.acquire(other).release()
    out = capsys.readouterr().out
    assert f"run lock {other}/run.lock: taking over from process " in out and "on host another-host" in out
    assert not paths.join(other, "run.lock").exists()


@pytest.mark.gcs
def test_the_bucket_lock_holder_rewrites_it_so_that_it_never_looks_stale(gcs, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.2)
    lock = run_lock.acquire(gcs)
    try:
        _, first, _ = lock._current()
        time.sleep(1.5)
        holder, later, age = lock._current()
        assert later != first and age < 1.5                     # rewritten meanwhile, same holder
        assert holder["pid"] == os.getpid()
    finally:
        lock.release()
    assert not paths.join(gcs, "run.lock").exists()
