"""Storage through the error boundary: misspelled schemes and bucket URIs refused with the fix before anything
loads, files where directories are expected, full and read-only disks, each one `error:` line in a bounded time
with nothing saved lost. (The storage server's faults are in tests/test_gcs.py.)"""
import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from aple_jax import paths
from aple_jax.errors import PathError, StorageFaultError, error_boundary
from tests import cli
from tests.cli import Case, launch, module

TINY = "configs/coop.py:tiny"
TYPO_BOUND_S = 120     # a refused path costs a process start and the config check; nothing loads, nothing is retried


@pytest.mark.parametrize("path, fix", [
    ("gcs://bkt/run", "did you mean 'gs://bkt/run'?"),
    ("gs:/bkt/run", "did you mean 'gs://bkt/run'?"),
    ("gs:bkt/run", "did you mean 'gs://bkt/run'?"),
    ("gs:///bkt/run", "did you mean 'gs://bkt/run'?"),
    ("GS://bkt/run", "did you mean 'gs://bkt/run'?"),
    ("gs//bkt/run", "did you mean 'gs://bkt/run'?"),
    ("gs://", "names no bucket"),
    ("gs:", "names no bucket"),
    ("gs://My-Bucket/run", "did you mean 'gs://my-bucket/run'?"),
    ("gs://b/run", "'b' is not a bucket name"),
    ("gs://-bkt/run", "'-bkt' is not a bucket name"),
    ("s3://bkt/run", "s3:// paths are not supported"),
    ("http://example.org/w", "http:// paths are not supported"),
    ("https://example.org/w", "https:// paths are not supported"),
    ("file:///tmp/run", "give the local path '/tmp/run'"),
    ("hdfs:/x", "hdfs:// paths are not supported"),
])
def test_misspelled_paths_are_refused_with_the_fix(path, fix):
    problem = paths.path_problem(path)
    assert problem is not None and fix in problem and repr(path) in problem
    with pytest.raises(PathError, match="--workdir"):
        paths.check_path(path, "--workdir")
    with pytest.raises(PathError):
        paths.as_path(path)          # every path the code opens passes here


@pytest.mark.parametrize("path", ["gs://bkt/run", "gs://my_bucket.example.com/a/b", "runs/x", "/tmp/a:b",
                                  "world:scenes/seed1", "runs/aple/world:WorldScenes-Invert/seed1", "", "."])
def test_local_paths_and_well_formed_buckets_pass(path):
    assert paths.path_problem(path) is None
    assert paths.check_path(path) == path


def test_a_file_where_a_directory_is_expected(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathError, match=r"--workdir .*/file is a file; expected a directory"):
        paths.check_dir(str(tmp_path / "file"), "--workdir")
    with pytest.raises(PathError, match=r"is below .*/file, which is a file"):
        paths.check_dir(str(tmp_path / "file" / "a" / "b"), "--workdir")
    assert paths.check_dir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")


def _timed(case: Case):
    start = time.monotonic()
    proc = cli.run_case(case)
    return proc, time.monotonic() - start


def assert_user_errors_within(cases: list[Case], bound_s: float) -> None:
    """Every case ends as one `error:` line naming its needle (cli.assert_user_error), each within `bound_s`."""
    with ThreadPoolExecutor(cli.WORKERS) as pool:
        results = dict(zip([c.name for c in cases], pool.map(_timed, cases)))
    failures = []
    for case in cases:
        proc, seconds = results[case.name]
        try:
            cli.assert_user_error(case, proc)
            assert seconds < bound_s, f"took {seconds:.0f} s, bound {bound_s} s"
        except AssertionError as e:
            failures.append(f"{case.name}: {e}")
    assert not failures, "\n\n".join(failures)


def test_entry_points_refuse_misspelled_paths_and_files_as_directories(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    w = str(tmp_path / "run")
    cases = [
        Case("workdir_gcs", launch("--config", TINY, "--workdir", "gcs://bkt/run"), "did you mean 'gs://bkt/run'"),
        Case("workdir_one_slash", launch("--config", TINY, "--workdir", "gs:/bkt/run"), "did you mean 'gs://bkt/run'"),
        Case("workdir_no_bucket", launch("--config", TINY, "--workdir", "gs://"), "names no bucket"),
        Case("weights_gcs", launch("--config", TINY, "--workdir", w, "--config.backbone.weights=gcs://bkt/w"),
             "backbone.weights: 'gcs://bkt/w' is not a bucket path; did you mean 'gs://bkt/w'"),
        Case("data_s3", launch("--config", f"{TINY},dataset=OxfordPets,data=s3://bkt/DATA", "--workdir", w),
             "dataset.root: 's3://bkt/DATA': s3:// paths are not supported"),
        Case("eval_only_http", launch("--config", TINY, "--workdir", w, "--config.eval_only_from=https://x.org/p.npz"),
             "eval_only_from: 'https://x.org/p.npz'"),
        Case("tokenizer_tiny", launch("--config", TINY, "--workdir", w, "--config.backbone.tokenizer=/nowhere/tok"),
             "backbone.tokenizer='/nowhere/tok' means nothing to the tiny backbone"),
        Case("weights_dir_empty", launch("--config", TINY, "--workdir", w,
                                         f"--config.backbone.weights={tmp_path}/noweights"),
             f"{tmp_path}/noweights has no CLIP weights: expected model.safetensors"),
        Case("workdir_is_file", launch("--config", TINY, "--workdir", str(tmp_path / "afile")),
             f"--workdir {tmp_path}/afile is a file"),
        Case("workdir_below_file", launch("--config", TINY, "--workdir", str(tmp_path / "afile" / "run")),
             f"is below {tmp_path}/afile, which is a file"),
        Case("sweep_runs_dir", module("aple_jax.sweep", "--configs", "configs/zeroshot.py", "--args", "tiny",
                                      "--runs-dir", "gcs://bkt/runs"), "did you mean 'gs://bkt/runs'"),
        Case("report_runs", module("aple_jax.report", "gs:/bkt/runs"), "did you mean 'gs://bkt/runs'"),
        Case("room_seeds", module("aple_jax.world.room", "--seeds", "1,x"), "--seeds '1,x': expected"),
    ]
    assert_user_errors_within(cases, TYPO_BOUND_S)
    assert not os.path.exists(os.path.join(cli.REPO, "gs:"))      # no local folder named like a bucket


# ----------------------------------------------------------------------------------------------- local disk faults

@pytest.mark.parametrize("number, reason", [(errno.ENOSPC, "no space left on the device"),
                                            (errno.EROFS, "the file system is read-only")])
def test_a_failing_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, number, reason):
    target = tmp_path / "results.json"
    paths.write_json_atomic(target, {"accuracy": 1})

    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number), str(tmp_path / ".results.json.0badf00d.tmp"))

    monkeypatch.setattr(os, "fsync", fail)      # the lowest call of an atomic write
    with pytest.raises(StorageFaultError, match=f"cannot write {target}: {reason}"):
        paths.write_json_atomic(target, {"accuracy": 2})
    assert json.loads(target.read_text()) == {"accuracy": 1}
    assert os.listdir(tmp_path) == ["results.json"]           # no temporary file left


def _boundary(error: BaseException) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        with error_boundary():
            raise error
    return exit_info.value.code, stderr.getvalue()


def test_the_boundary_turns_storage_faults_anywhere_into_one_line(monkeypatch):
    monkeypatch.delenv("APLE_JAX_TRACEBACK", raising=False)
    code, out = _boundary(OSError(errno.ENOSPC, "No space left on device", "/runs/x/.config.json.1a2b3c4d.tmp"))
    assert code == 2 and out.splitlines()[0] == "error: cannot use /runs/x/config.json: no space left on the device"
    tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing \"a/0.0\" in OCDBT database: Failed to write 10 "
                             "bytes to file 7: No space left on device [os_error_code='28']")
    try:
        raise RuntimeError("orbax save failed") from tensorstore
    except RuntimeError as wrapped:
        code, out = _boundary(wrapped)
    assert code == 2 and "no space left on the device" in out
    code, out = _boundary(OSError(errno.EROFS, "Read-only file system", "/runs/x/metrics.jsonl"))
    assert out.splitlines()[0] == "error: cannot use /runs/x/metrics.jsonl: the file system is read-only"
    with pytest.raises(KeyError):                 # a bug keeps its traceback
        with error_boundary():
            raise KeyError("x")
    with pytest.raises(ValueError):
        with error_boundary():
            raise ValueError("RESOURCE_EXHAUSTED is just a word here")


QUIET_ENV = {k: v for k, v in os.environ.items() if k != "APLE_JAX_TRACEBACK"}
STUCK_SAVE = """
import sys, threading; sys.path.insert(0, '.')
from aple_jax.errors import {fault}, error_boundary, exit_at_once_after_storage_faults
threading.Thread(target=threading.Event().wait, name="a save waiting for a signal that never comes").start()
with exit_at_once_after_storage_faults(), error_boundary():
    raise {fault}("cannot write gs://b/runs/x/checkpoints: the storage server did not answer")
"""


def test_a_storage_fault_ends_the_process_without_waiting_for_stuck_save_threads():
    """orbax's save threads of a failed save may wait out a 300 s timeout; launch.py does not wait for them. Any
    other error still leaves at interpreter shutdown (here it would wait forever: the timeout proves it)."""
    proc = subprocess.run([sys.executable, "-c", STUCK_SAVE.format(fault="StorageFaultError")], cwd=cli.REPO,
                          env=QUIET_ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("error: cannot write gs://b/runs/x/checkpoints"), proc.stderr
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", STUCK_SAVE.format(fault="CheckpointError")], cwd=cli.REPO,
                       env=QUIET_ENV, capture_output=True, text=True, timeout=5)


def test_a_storage_fault_while_restoring_deletes_no_checkpoint(tmp_path, monkeypatch):
    from aple_jax.checkpoint import RunCheckpoints
    state = {"w": np.arange(4.0)}
    with RunCheckpoints(str(tmp_path)) as ckpt:
        ckpt.save(1, state, {"phase": 0})
        ckpt.save(2, state, {"phase": 0})

    def unreachable(self, step):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(RunCheckpoints, "restore_meta", unreachable)
    with RunCheckpoints(str(tmp_path)) as ckpt:
        with pytest.raises(StorageFaultError, match="cannot read checkpoint .*checkpoints/2: an input/output error"):
            ckpt.restore_newest(lambda meta: state)
        assert ckpt.manager.all_steps() == [1, 2]   # a broken file would be deleted; a failing disk deletes nothing


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


# In a private mount namespace (nothing leaks to the machine): a tiny run stopped at step 5 (checkpoints at 2 and 4)
# on a small tmpfs, copied to a second one; the first filled up but for 24 KiB, the second remounted read-only; the
# same command resumed on each; then the space freed and the first resumed to the end.
DISK_FAULTS = r"""
set -u
D=$1; PY=$2
mkdir -p $D/full $D/ro
mount -t tmpfs -o size=8m tmpfs $D/full && mount -t tmpfs -o size=8m tmpfs $D/ro || exit 90
ARGS="--config configs/coop.py:tiny --config.progress=False --config.checkpoint_every_steps=2"
$PY tests/run_worker.py $D/full/run coop --set checkpoint_every_steps=2 --stop 5 | grep RESULT
cp -a $D/full/run $D/ro/run
dd if=/dev/zero of=$D/full/filler bs=64k 2>/dev/null; truncate -s -24K $D/full/filler
mount -o remount,ro $D/ro
for W in full ro; do
  start=$(date +%s%N)
  $PY launch.py $ARGS --workdir $D/$W/run > /dev/null 2> $D/$W.err
  echo "FAULT $W $? $(( ($(date +%s%N) - start) / 1000000 ))"
done
rm $D/full/filler; mount -o remount,rw $D/ro
$PY -c "
import sys; sys.path.insert(0, '.')
from aple_jax.checkpoint import RunCheckpoints
for w in ('full', 'ro'):
    with RunCheckpoints('$D/' + w + '/run') as c:
        c.restore_meta(c.latest_step())
        print('KEPT', w, c.manager.all_steps())
"
$PY launch.py $ARGS --workdir $D/full/run > /dev/null 2>&1
echo "RESUMED $? $(test -f $D/full/run/results.json && echo results)"
"""
DISK_FAULT_BOUND_S = 240     # no retry on a local disk: a process start, the config check, a resume (slow machine)


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare) for a full / read-only disk")
def test_full_and_read_only_disks_end_in_one_line_and_keep_the_checkpoints(tmp_path):
    script = tmp_path / "faults.sh"
    script.write_text(DISK_FAULTS)
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", str(script), str(tmp_path),
                          sys.executable], cwd=cli.REPO, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    lines = out.stdout.splitlines()
    report = f"{out.stdout}\n{out.stderr[-3000:]}"
    assert 'RESULT {"preempted": true}' in lines, report
    for where, reason in (("full", "no space left on the device"), ("ro", "the file system is read-only")):
        status, millis = next(l.split()[2:] for l in lines if l.startswith(f"FAULT {where} "))
        stderr = (tmp_path / f"{where}.err").read_text()
        errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
        assert status == "2" and len(errors) == 1, f"{report}\n{where}:\n{stderr}"
        assert "Traceback" not in stderr, f"{where}:\n{stderr}"
        assert f"{tmp_path}/{where}/run" in errors[0] and reason in errors[0], errors     # the run or a file in it
        assert int(millis) < DISK_FAULT_BOUND_S * 1000, (where, millis)
        assert f"KEPT {where} [2, 4]" in lines, report        # both checkpoints intact and readable
    assert "RESUMED 0 results" in lines, report
