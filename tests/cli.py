"""Bad inputs through the real command lines, in subprocesses run a few at a time."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 3
TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: the command's arguments after `python`, and what its error must name."""
    name: str
    argv: tuple[str, ...]
    needle: str


def launch(*args: str) -> tuple[str, ...]:
    return ("launch.py", *args)


def module(name: str, *args: str) -> tuple[str, ...]:
    return ("-m", name, *args)


def run_case(case: Case) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    env.pop("APLE_JAX_TRACEBACK", None)
    return subprocess.run([sys.executable, *case.argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def run_all(cases: list[Case]) -> dict[str, subprocess.CompletedProcess]:
    """Every case's finished process, by name."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip([c.name for c in cases], pool.map(run_case, cases)))


def assert_user_error(case: Case, proc: subprocess.CompletedProcess) -> None:
    """Exit status 2, no traceback, one `error:` line naming the key, file or value."""
    report = f"{case.argv}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr, report
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, report
    assert case.needle in errors[0], report


def assert_all_user_errors(cases: list[Case]) -> None:
    """Runs every case and asserts each is a user error (see `assert_user_error`), reporting all failures at once."""
    results = run_all(cases)
    failures = []
    for case in cases:
        try:
            assert_user_error(case, results[case.name])
        except AssertionError as e:
            failures.append(f"{case.name}: {e}")
    assert not failures, "\n\n".join(failures)
