"""Every path may be gs://: runs, resumes, 2-process training, datasets, reports and sweeps against a local GCS API
emulator (tests/gcs_emulator.py), and clear errors for missing buckets and objects."""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import fsspec
import numpy as np
import pytest

from aple_jax import paths, train
from aple_jax.clip.backbone import load_backbone
from aple_jax.data import build_dataset
from aple_jax.data.errors import MissingDataError
from aple_jax.data.fake_trees import jpeg_bytes, write_coop_tree
from aple_jax.errors import StorageError
from aple_jax.prompt_files import PROMPTS_META_KEY
from aple_jax.run import run
from tests.gcs_emulator import BUCKET, Emulator, client_env, free_port
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.gcs

SMALL = dict(dataset__shots=8, batch_size=8, eval_batch_size=16, stage1__epochs=1, stage2__epochs=1,
             log_every=2, checkpoint_every_steps=3)


def _upload(local: str, remote: str) -> None:
    fsspec.filesystem("gs").put(local.rstrip("/") + "/", remote.removeprefix("gs://").rstrip("/") + "/",
                                recursive=True)


def _objects(remote: str) -> list[str]:
    base = remote.removeprefix("gs://")
    return sorted(name[len(base) + 1:] for name in fsspec.filesystem("gs").find(base))


def _prompts(workdir: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(paths.join(workdir, "prompts.npz").read_bytes())) as f:
        return {k: f[k] for k in f.files if k != PROMPTS_META_KEY}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_run_in_a_bucket_writes_every_file_there_and_resumes_bit_for_bit(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # a stray local folder named `gs:` would show up here
    config = tiny_config("aple", **SMALL)
    full = run(config, f"{gcs}/full")
    objects = _objects(f"{gcs}/full")
    for name in ("config.json", "results.json", "metrics.jsonl", "prompts.npz", "classnames.json"):
        assert name in objects
    assert any(o.startswith("tensorboard/events.out.tfevents") for o in objects)
    assert any(o.startswith("checkpoints/") for o in objects)
    rows = [json.loads(l) for l in paths.join(gcs, "full", "metrics.jsonl").read_text().splitlines()]
    assert rows and {"loss", "accuracy"} <= set(rows[0])
    assert not os.listdir(tmp_path)

    stop = train.steps_per_epoch(5 * 8, 8) + 3        # inside phase V, after a mid-epoch checkpoint
    with pytest.raises(train.Preempted):
        run(config, f"{gcs}/cut", stop_at_step=stop)
    assert "results.json" not in _objects(f"{gcs}/cut")
    resumed = run(config, f"{gcs}/cut")
    _assert_identical(_prompts(f"{gcs}/cut"), _prompts(f"{gcs}/full"))
    assert resumed["accuracy"] == full["accuracy"]
    cut_rows = paths.join(gcs, "cut", "metrics.jsonl").read_text().splitlines()
    assert len(cut_rows) >= len(rows)                # rows of the first attempt were kept, not overwritten


def test_missing_bucket_or_object_is_one_clear_error_naming_the_path(gcs_emulator, tmp_path):
    with pytest.raises(StorageError, match="gs://no-such-bucket/runs/x: bucket gs://no-such-bucket does not exist"):
        run(tiny_config("zeroshot"), "gs://no-such-bucket/runs/x")
    with pytest.raises(StorageError, match="gs://bkt/weights/absent does not exist"):
        load_backbone("world", "gs://bkt/weights/absent")
    with pytest.raises(StorageError, match="bucket gs://no-such-bucket does not exist"):
        load_backbone("world", "gs://no-such-bucket/weights/world")
    with pytest.raises(MissingDataError, match="gs://bkt/DATA-absent/oxford_pets"):
        build_dataset("OxfordPets", "gs://bkt/DATA-absent", shots=1, seed=1)


def test_coop_dataset_in_a_bucket_gives_the_local_few_shot_picks(gcs, tmp_path):
    local = tmp_path / "DATA"
    write_coop_tree(str(local), "OxfordPets", num_classes=6, per_class=(5, 2, 2))
    _upload(str(local), f"{gcs}/DATA")
    picks = {}
    for where, root in (("local", str(local)), ("bucket", f"{gcs}/DATA")):
        data = build_dataset("OxfordPets", root, shots=2, seed=3, subsample="base")
        picks[where] = (data.train.records, data.val.records, data.test.records, data.classnames)
        assert data.train[0]["image"].shape == (10, 12, 3)
    assert picks["bucket"] == picks["local"]
    cache = paths.join(gcs, "DATA", "oxford_pets", "split_fewshot", "shot_2-seed_3.json")
    assert cache.exists() and json.loads(cache.read_text())["train"]
    again = build_dataset("OxfordPets", f"{gcs}/DATA", shots=2, seed=3, subsample="base")
    assert again.train.records == picks["local"][0]


def test_world_weights_from_a_bucket_equal_the_shipped_ones(gcs):
    from aple_jax.world import WORLD_CLIP_DIR
    _upload(WORLD_CLIP_DIR, f"{gcs}/world")
    _, local, tok_local = load_backbone("world", "")
    _, remote, tok_remote = load_backbone("world", f"{gcs}/world")
    import jax
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), local, remote))
    assert tok_remote.encode("a photo of a cat.") == tok_local.encode("a photo of a cat.")


def test_sweep_and_report_over_a_bucket(gcs, tmp_path, capsys):
    from aple_jax import report, sweep
    runs = f"{gcs}/runs"
    argv = ["--configs", "configs/zeroshot.py", "--seeds", "1,2", "--args", "tiny", "--runs-dir", runs]
    assert sweep.main(argv) == 0
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 2                   # the second sweep finds both runs finished in the bucket
    summary = report.report(runs)
    assert summary["num_runs"] == 2 and summary["runs_dir"] == runs
    assert {"results.md", "results.json"} <= set(_objects(runs))
    assert "zeroshot" in paths.join(runs, "results.md").read_text()


def _worker_env(gcs_emulator, devices: int = 1) -> dict:
    return dict(os.environ, **gcs_emulator.env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu")


def _two_processes(gcs_emulator, workdir: str, *args: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = ["--set=dataset.shots=8", "--set=batch_size=8", "--set=eval_batch_size=16", "--set=stage1.epochs=1",
            "--set=stage2.epochs=1", "--set=checkpoint_every_steps=3", "--set=log_every=2"]
    env = _worker_env(gcs_emulator)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)   # a cache hit in one process only can outwait Gloo's 30 s setup
    procs = [subprocess.Popen([sys.executable, "tests/run_worker.py", workdir, "aple", *sets, *args,
                               "--distributed", f"127.0.0.1:{port}", "2", str(pid)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    line = next(l for l in outs[0][0].splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_processes_train_in_a_bucket_are_stopped_and_resume_bit_for_bit(gcs_emulator, gcs):
    full = _two_processes(gcs_emulator, f"{gcs}/full")
    assert full["device_count"] == 2
    stop = train.steps_per_epoch(5 * 8, 8) + 3
    assert _two_processes(gcs_emulator, f"{gcs}/cut", f"--stop={stop}") == {"preempted": True}
    resumed = _two_processes(gcs_emulator, f"{gcs}/cut")
    _assert_identical(resumed["prompts"], full["prompts"])
    assert "results.json" in _objects(f"{gcs}/cut")


@pytest.mark.slow
def test_readme_demo_with_a_bucket_workdir_and_bucket_weights(gcs_emulator, gcs):
    from aple_jax.world import WORLD_CLIP_DIR
    _upload(WORLD_CLIP_DIR, f"{gcs}/weights/world")
    workdir = f"{gcs}/runs/demo"
    out = subprocess.run([sys.executable, "launch.py", "--config", "configs/aple.py:demo,seed=1", "--workdir", workdir,
                          f"--config.backbone.weights={gcs}/weights/world", "--config.progress=False"], cwd=ROOT,
                         env=_worker_env(gcs_emulator), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| aple | WorldScenes-Invert | 1 |" in out.stdout
    objects = _objects(workdir)
    for name in ("config.json", "results.json", "metrics.jsonl", "prompts.npz", "classnames.json"):
        assert name in objects
    assert any(o.startswith("tensorboard/") for o in objects) and any(o.startswith("checkpoints/") for o in objects)
    results = json.loads(paths.join(workdir, "results.json").read_text())
    assert results["config"]["backbone"]["weights"] == f"{gcs}/weights/world"


def test_input_benchmark_reads_from_a_bucket(gcs_emulator, gcs):
    out = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--root", f"{gcs}/bench", "--num-images",
                          "48", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--workers", "0"], cwd=ROOT,
                         env=_worker_env(gcs_emulator), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Input pipeline from {gcs}/bench, 24 generated" in out.stdout     # the training half
    rate = float(out.stdout.strip().splitlines()[-1].split("|")[2])
    assert rate > 0
    assert len(_objects(f"{gcs}/bench")) == 48


# ----------------------------------------------------------------------------------------------- server faults

FAST_DEADLINE = {"APLE_JAX_STORAGE_DEADLINE_S": "5"}
# A process start and one storage deadline (5 s here; 60 s by default) with a wide margin for a loaded machine. When
# the server goes away in the middle of a save, orbax's threads of that save may wait for its coordination timeout
# (300 s); launch.py does not wait for them after a storage fault (exit_at_once_after_storage_faults).
SERVER_FAULT_BOUND_S = 120
TINY_LONG = ["launch.py", "--config", "configs/coop.py:tiny", "--config.progress=False",
             "--config.checkpoint_every_steps=2", "--config.optim.epochs=40"]


def _one_error_line(proc: subprocess.CompletedProcess, needle: str) -> str:
    report = f"rc={proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], report
    assert "Traceback" not in proc.stderr, report
    return errors[0]


def test_no_server_listening_is_one_line_within_the_deadline(tmp_path):
    env = dict(os.environ, **client_env(f"http://127.0.0.1:{free_port()}"), **FAST_DEADLINE, JAX_PLATFORMS="cpu")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, *TINY_LONG, "--workdir", "gs://bkt/runs/x"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    _one_error_line(proc, "cannot create gs://bkt/runs/x: the storage server http://127.0.0.1:")
    assert seconds < SERVER_FAULT_BOUND_S, seconds


def _objects_over_http(url: str, prefix: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?prefix={prefix}", timeout=5) as r:
        return [item["name"] for item in json.loads(r.read()).get("items", [])]


def _run_until_a_checkpoint(emulator: Emulator, workdir: str) -> subprocess.Popen:
    env = dict(os.environ, **emulator.env, **FAST_DEADLINE, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, *TINY_LONG, "--workdir", f"gs://{BUCKET}/{workdir}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not any("/commit_success" in o or o.endswith("_CHECKPOINT_METADATA")
                  for o in _objects_over_http(emulator.url, f"{workdir}/checkpoints/")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    return proc


@pytest.mark.slow
def test_a_server_gone_mid_run_ends_the_run_in_one_line_within_the_bound():
    emulator = Emulator()
    try:
        proc = _run_until_a_checkpoint(emulator, "runs/gone")
    finally:
        emulator.stop()                    # in memory: the bucket goes with it (local-disk tests check what is kept)
    start = time.monotonic()
    out, err = proc.communicate(timeout=600)
    seconds = time.monotonic() - start
    _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                    "the storage server http://127.0.0.1:")
    assert seconds < SERVER_FAULT_BOUND_S, seconds


def _delete_bucket(url: str) -> None:
    """Deletes the bucket and its objects while a run may still be writing new ones (a non-empty bucket: 412)."""
    for _ in range(50):
        for name in _objects_over_http(url, ""):
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(urllib.request.Request(
                    f"{url}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}", method="DELETE"))
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/storage/v1/b/{BUCKET}", method="DELETE"))
            return
        except urllib.error.HTTPError as e:
            assert e.code == 412, e
    raise AssertionError("the bucket kept filling up")


@pytest.mark.slow
def test_a_bucket_deleted_mid_run_ends_the_run_in_one_line():
    emulator = Emulator()
    try:
        proc = _run_until_a_checkpoint(emulator, "runs/vanish")
        _delete_bucket(emulator.url)
        start = time.monotonic()
        out, err = proc.communicate(timeout=600)
        seconds = time.monotonic() - start
    finally:
        emulator.stop()
    _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), f"gs://{BUCKET}")
    assert seconds < SERVER_FAULT_BOUND_S, seconds


def test_the_gcs_clients_are_bounded():
    """epath's and fsspec's gs:// filesystems are the bounded one; orbax's tensorstore contexts carry the bound."""
    from etils.epath import backend
    from orbax.checkpoint._src.serialization import tensorstore_utils

    from aple_jax import gcs
    assert isinstance(fsspec.filesystem("gs"), gcs.BoundedGCSFileSystem)
    assert isinstance(backend.fsspec_backend.fs(f"gs://{BUCKET}/x"), gcs.BoundedGCSFileSystem)
    gcs.bound_orbax_retries()
    for ocdbt in (True, False):
        spec = tensorstore_utils.get_ts_context(use_ocdbt=ocdbt).spec.to_json()
        assert spec["gcs_request_retries"]["max_retries"] == gcs.tensorstore_retries()["max_retries"]
