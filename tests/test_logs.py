"""Logs that read well where they go: plain progress lines in a file and the bar on a terminal, TensorBoard events
that TensorBoard's own reader reads back as metrics.jsonl has them, loader workers that leave nothing behind, and
sweeps that log each run, go on after a failure and finish only what is missing."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import jax
import pytest

from aple_jax.capture import tee_output
from aple_jax.data.fake_trees import write_coop_tree
from aple_jax.progress import BarProgress, LineProgress, make_progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
# A short CoOp run on the tiny CLIP: 2 epochs x 5 steps, one loader worker process.
TINY_RUN = ["--config", "configs/coop.py:tiny", "--config.optim.epochs=2", "--config.dataset.shots=8",
            "--config.batch_size=8", "--config.eval_batch_size=16", "--config.log_every=2",
            "--config.dataset.num_workers=1", "--config.progress_every_seconds=0.5"]
LEAK_WORDS = ("resource_tracker", "leaked shared_memory", "leaked semaphore")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_kind_follows_the_stream(monkeypatch):
    assert isinstance(make_progress(10, stream=io.StringIO()), LineProgress)
    bar = make_progress(10, stream=FakeTerminal())
    assert isinstance(bar, BarProgress)
    bar.close()
    assert make_progress(10, enabled=False, stream=FakeTerminal()) is None
    monkeypatch.setattr(jax, "process_index", lambda: 1)     # other hosts of a multi-host run print no progress
    assert make_progress(10, stream=FakeTerminal()) is None and make_progress(10, stream=io.StringIO()) is None


def test_line_progress_prints_every_n_seconds_and_at_epoch_ends(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = LineProgress(total_steps=8, initial_step=0, stream=out, every_seconds=30.0)
    p.start_phase("ctx", 0, 0, epochs=2)
    for step in range(1, 5):
        clock[0] += 10.0                          # 10 s per step: a line at the 3rd step (30 s after the start)
        p.advance(step)
        if step == 2:
            p.metrics(1, 0.5, 0.75)
    p.end_epoch(1, 4)
    for step in range(5, 9):
        p.advance(step)                           # no time passes: no timed line
    p.end_epoch(2, 8)
    lines = out.getvalue().splitlines()
    assert lines == [
        "phase 1 ctx | epoch 1/2 | step 3/8 (38%) | loss 0.5000 | acc 75.0% | 0.10 steps/s | ETA 0:50",
        "phase 1 ctx | epoch 1/2 | step 4/8 (50%) | loss 0.5000 | acc 75.0% | 0.10 steps/s | ETA 0:40 | epoch end",
        "phase 1 ctx | epoch 2/2 | step 8/8 (100%) | loss 0.5000 | acc 75.0% | 0.23 steps/s | ETA 0:00 | phase end",
    ]


def test_tee_output_copies_both_descriptors_and_passes_them_through(capfd):
    with tee_output() as captured:
        os.write(1, b"to stdout\n")
        os.write(2, b"to stderr\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child\\n')"], check=True)
        captured.append("only in the log\n")
    text = captured.text()
    for line in ("to stdout", "to stderr", "from a child", "only in the log"):
        assert line + "\n" in text
    out, err = capfd.readouterr()
    assert out == "to stdout\n" and err == "to stderr\nfrom a child\n"


@pytest.fixture(scope="module")
def tiny_run_to_file(tmp_path_factory):
    """launch.py's tiny run with stdout in a file (stderr kept apart), as on a cluster."""
    workdir = tmp_path_factory.mktemp("run")
    with open(workdir / "stdout.log", "w") as out:
        proc = subprocess.run([sys.executable, "launch.py", *TINY_RUN, "--workdir", str(workdir / "run")],
                              cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "run", (workdir / "stdout.log").read_text(), proc.stderr


def test_progress_in_a_file_is_plain_lines(tiny_run_to_file):
    _, stdout, _ = tiny_run_to_file
    assert "\r" not in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("phase 1 ")]
    assert [line.rsplit(" | ", 1)[1] for line in lines if line.endswith("end")] == ["epoch end", "phase end"]
    for line in lines:
        assert re.search(r"step \d+/10 \(\d+%\)", line), line
    assert re.fullmatch(r"phase 1 \S+ \| epoch 2/2 \| step 10/10 \(100%\) \| loss \d\.\d{4} \| acc \d+\.\d% \| "
                        r"\d+\.\d\d steps/s \| ETA 0:00 \| phase end", lines[-1]), lines[-1]


def test_tensorboard_reader_reads_the_scalars_of_metrics_jsonl(tiny_run_to_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    workdir, _, _ = tiny_run_to_file
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "phase", "epoch"):
                expected.setdefault(f"{row['phase']}/{key}", []).append((row["step"], value))
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, values in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in values], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in values], rel=1e-6), tag
    assert {"loss", "accuracy", "ce"} <= {t.split("/", 1)[1] for t in expected}
    assert sorted({s for s, _ in expected[next(iter(expected))]}) == [2, 4, 5, 6, 8, 10]   # every 2 + epoch ends


def test_loader_workers_leave_nothing_behind(tiny_run_to_file):
    _, _, stderr = tiny_run_to_file
    for word in LEAK_WORDS:
        assert word not in stderr, stderr[-3000:]


def test_loader_workers_leave_nothing_behind_after_an_error(tmp_path):
    """A run whose loss overflows stops with an error while its loader worker runs: still nothing leaks."""
    proc = subprocess.run([sys.executable, "launch.py", *TINY_RUN, "--config.optim.lr=1e38",
                           "--workdir", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0 and "NaN or infinite" in proc.stderr, proc.stderr[-3000:]
    for word in LEAK_WORDS:
        assert word not in proc.stderr, proc.stderr[-3000:]


def test_progress_on_a_terminal_is_the_bar(tmp_path):
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "launch.py", *TINY_RUN, "--config.dataset.num_workers=0",
                             "--config.optim.epochs=1", "--workdir", str(tmp_path)],
                            cwd=ROOT, env=ENV, stdin=child, stdout=child, stderr=subprocess.PIPE)
    os.close(child)
    out = b""
    while True:
        ready, _, _ = select.select([parent], [], [], 600)
        try:
            chunk = os.read(parent, 65536) if ready else b""
        except OSError:       # the terminal closed with the process
            chunk = b""
        if not chunk:
            break
        out += chunk
    os.close(parent)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()[-3000:]
    text = out.decode(errors="replace")
    assert "\r" in text and re.search(r"phase 1 \S+: +\d+%\|", text), text[-2000:]
    assert re.search(r"5/5 \[[^\]]*(step/s|s/step), acc=[\d.]+, epoch=1, loss=\d\.\d{4}\]", text), text[-2000:]
    assert " | epoch end" not in text


@pytest.mark.slow
def test_demo_to_a_file_prints_plain_lines(tmp_path):
    """The README's demo (one of its seeds: about a minute) with stdout redirected: plain lines, no carriage
    return."""
    with open(tmp_path / "demo.log", "w") as out:
        proc = subprocess.run([sys.executable, "launch.py", "--config", "configs/aple.py:demo,seed=1", "--workdir",
                               str(tmp_path / "demo")], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = (tmp_path / "demo.log").read_text()
    assert "\r" not in stdout
    assert stdout.count("| phase end") == 3 and "| aple |" in stdout, stdout


def _sweep(runs_dir, data) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aple_jax.sweep", "--configs", "configs/zeroshot.py", "--datasets",
                           "synthetic,DTD", "--args", f"tiny,data={data}", "--seeds", "1", "--runs-dir",
                           str(runs_dir)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def test_sweep_goes_on_after_a_failure_logs_it_and_finishes_what_is_missing(tmp_path):
    """DTD's data is missing (found only at run time): the sweep runs the other run, names the failed one, exits
    non-zero; its train.log holds the error. With the data in place, a rerun runs only DTD."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    ok = runs / "zeroshot" / "base2new" / "Synthetic" / "shots_16" / "seed1"
    bad = runs / "zeroshot" / "base2new" / "DTD" / "shots_16" / "seed1"
    first = _sweep(runs, data)
    assert first.returncode == 1, first.stderr[-3000:]
    out = first.stdout
    assert re.search(rf"\[1/2\] run {ok} \(elapsed 0:00\)", out)
    assert re.search(rf"\[1/2\] finished {ok} in \d+:\d\d \(elapsed \d+:\d\d, ETA \d+:\d\d\)", out), out
    assert re.search(rf"\[2/2\] FAILED {bad} after \d+:\d\d: MissingDataError: DescribableTextures", out), out
    assert "sweep: 1 finished, 0 skipped (finished before), 1 failed" in out
    summary = out[out.index("failed runs"):]
    assert f"  {bad}: MissingDataError" in summary and str(ok) not in summary
    log = (bad / "train.log").read_text()
    assert "Traceback" in log and "MissingDataError: DescribableTextures" in log and f"--workdir {bad}" in log
    assert "seed 1: Synthetic" in (ok / "train.log").read_text()
    assert not (bad / "results.json").exists() and (ok / "results.json").exists()

    write_coop_tree(str(data), "DescribableTextures", num_classes=4)
    second = _sweep(runs, data)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert f"[1/2] skip {ok}: results.json exists (finished)" in second.stdout
    assert f"[2/2] finished {bad}" in second.stdout
    assert "sweep: 1 finished, 1 skipped (finished before), 0 failed" in second.stdout
    log = (bad / "train.log").read_text()
    assert log.count("sweep run 2/2 (") == 2 and "seed 1: DescribableTextures" in log   # both attempts, in order
    assert log.index("MissingDataError") < log.rindex("sweep run 2/2 (")


def test_stop_on_error_stops_at_the_first_failure(tmp_path, capsys):
    from aple_jax import sweep
    (tmp_path / "data").mkdir()
    argv = ["--configs", "configs/zeroshot.py", "--datasets", "DTD,synthetic", "--args",
            f"tiny,data={tmp_path / 'data'}", "--seeds", "1", "--runs-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as stopped:       # the failing run's user error, as one error: line
        sweep.main(argv + ["--stop-on-error"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: DescribableTextures dataset directory")
    assert not (tmp_path / "runs" / "zeroshot" / "base2new" / "Synthetic").exists()
    assert "MissingDataError" in (tmp_path / "runs" / "zeroshot" / "base2new" / "DTD" / "shots_16" / "seed1" /
                                  "train.log").read_text()
