"""A local GCS API server (gcp-storage-emulator) on 127.0.0.1 and the environment that points every client at it.

gcsfs/epath read STORAGE_EMULATOR_HOST, orbax's tensorstore TENSORSTORE_GCS_HTTP_URL; credential look-ups are kept
off any metadata server (a closed local port) and use an anonymous token. Nothing but 127.0.0.1 is reached.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

BUCKET = "bkt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(port: int) -> dict[str, str]:
    """The variables that send gcsfs, epath and tensorstore to the emulator on `port`, and nowhere else."""
    closed = f"127.0.0.1:{free_port()}"          # nothing listens there: metadata look-ups fail at once
    url = f"http://127.0.0.1:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed, "GCE_METADATA_ROOT": closed,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous", "GOOGLE_CLOUD_PROJECT": "test",
            "GOOGLE_APPLICATION_CREDENTIALS": ""}


class Emulator:
    """gcp-storage-emulator in memory, with bucket `bkt`, as a subprocess."""

    def __init__(self):
        self.port = free_port()
        exe = shutil.which("gcp-storage-emulator") or os.path.join(os.path.dirname(sys.executable),
                                                                    "gcp-storage-emulator")
        self.proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory",
                                      "--default-bucket", BUCKET, "-q"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait()
        self.env = client_env(self.port)

    def _wait(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gcp-storage-emulator exited at start")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/storage/v1/b/{BUCKET}", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not answer on 127.0.0.1:{self.port} in {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def running_emulator() -> Iterator[Emulator]:
    """Starts the emulator, points this process's clients at it, and stops it afterwards."""
    emulator = Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        emulator.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
