"""Shared fixtures: offline, CPU-only, tiny random CLIPs."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import itertools

import pytest

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A GCS API server on 127.0.0.1 with bucket `bkt`; this process and its children's clients point at it."""
    from tests.gcs_emulator import running_emulator
    yield from running_emulator()


@pytest.fixture
def gcs(gcs_emulator, request):
    """A fresh `gs://bkt/<test>-<n>` prefix of the session's emulator."""
    return f"gs://bkt/{request.node.name.split('[')[0]}-{next(_prefixes)}"
