"""Shared fixtures: offline, CPU-only, tiny random CLIPs; one XLA compilation cache for the session."""
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same tiny programs over and over (a run and its resume, each subprocess of a test): a session's
# persistent cache, inherited by subprocesses through the environment, compiles each once. Set
# JAX_COMPILATION_CACHE_DIR yourself to keep one between sessions.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="aple-jax-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import itertools

import pytest

_prefixes = itertools.count()


def pytest_sessionfinish(session, exitstatus):
    """Removes the session's compilation cache (not one the caller set)."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_emulator():
    """A GCS API server on 127.0.0.1 with bucket `bkt`; this process and its children's clients point at it."""
    from tests.gcs_emulator import running_emulator
    yield from running_emulator()


@pytest.fixture
def gcs(gcs_emulator, request):
    """A fresh `gs://bkt/<test>-<n>` prefix of the session's emulator."""
    return f"gs://bkt/{request.node.name.split('[')[0]}-{next(_prefixes)}"
