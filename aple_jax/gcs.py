"""The gs:// clients with a bound on how long a storage server that does not answer is waited for.

gcsfs (what etils.epath, and so aple-jax, uses for gs:// paths) retries a failing request six times with
exponential backoff (about 35 s), and one operation may make several requests. Here each request, its retries
included, ends within `deadline()` seconds (APLE_JAX_STORAGE_DEADLINE_S, default 60); once a request ran out of
time or retries, later ones get `FAILING_DEADLINE_S` until one succeeds, so an operation on a server that has gone
away ends in about one deadline. tensorstore (orbax's checkpoint writer) gets a retry budget of the same length.
The error then reaches the entry point's error boundary as one `error:` line naming the path.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os

import gcsfs

DEADLINE_ENV = "APLE_JAX_STORAGE_DEADLINE_S"
DEFAULT_DEADLINE_S = 60.0
FAILING_DEADLINE_S = 2.0


def deadline() -> float:
    """Seconds a gs:// request may take, its retries included."""
    text = os.environ.get(DEADLINE_ENV, "")
    try:
        value = float(text) if text else DEFAULT_DEADLINE_S
    except ValueError:
        value = -1.0
    if not value > 0:
        from aple_jax.errors import ConfigError
        raise ConfigError(f"{DEADLINE_ENV}={text!r}; expected a number of seconds > 0")
    return value


class BoundedGCSFileSystem(gcsfs.GCSFileSystem):
    """gcsfs with every request bounded by `deadline()` (see the module docstring)."""

    _failing = False     # the last request ran out of time or retries: the server is probably gone

    async def _request(self, *args, **kwargs):
        limit = FAILING_DEADLINE_S if BoundedGCSFileSystem._failing else deadline()
        try:
            out = await asyncio.wait_for(super()._request(*args, **kwargs), limit)
        except asyncio.TimeoutError:
            BoundedGCSFileSystem._failing = True
            # a ConnectionError (an OSError, as gcsfs expects), not a TimeoutError, which fsspec rewrites blank
            raise ConnectionError(errno.ETIMEDOUT, f"no answer within {limit:g} s, retries included") from None
        except Exception as e:
            BoundedGCSFileSystem._failing = type(e).__module__.startswith("aiohttp")   # no connection, no answer
            raise
        BoundedGCSFileSystem._failing = False
        return out


class _RetryLogs(logging.Filter):
    """Drops gcsfs's and fsspec's error logs with a traceback ("out of retries", a failed prefetch): they raise
    the same error to their caller, and the entry point reports it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)


for _name in ("gcsfs", "fsspec.prefetcher"):    # the prefetcher logs a failed background read, then raises it
    logging.getLogger(_name).addFilter(_RetryLogs())


def tensorstore_retries() -> dict:
    """tensorstore's `gcs_request_retries` context resource for a retry budget of about `deadline()` seconds
    (its default, 32 retries up to 32 s apart, waits up to about 15 minutes)."""
    limit = deadline()
    retries, waited, delay = 0, 0.0, 1.0
    while waited + delay <= limit:
        waited, delay, retries = waited + delay, min(2 * delay, 16.0), retries + 1
    return {"max_retries": max(retries, 1), "initial_delay": "1s", "max_delay": "16s"}


def bound_orbax_retries() -> None:
    """Gives the tensorstore contexts orbax makes for every checkpoint read and write `tensorstore_retries()`.
    orbax builds them from two module-level dicts and takes no context from its callers; tests/test_gcs.py checks
    that the contexts it makes carry the bound."""
    from orbax.checkpoint._src.serialization import tensorstore_utils
    retries = tensorstore_retries()
    for context in (tensorstore_utils._BASE_TS_CONTEXT, tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):
        context["gcs_request_retries"] = retries
