"""Paths that may be local or `gs://`: one type (`etils.epath.Path`, as orbax and tfds use) and atomic writes.

Every user path (run directories, data roots, weights, prompts files) goes through `as_path`; nothing below the
entry points calls `open()`, `os.path` or `os.makedirs` on it. A write is atomic: locally a temporary file in the
same folder renamed over the target; on a bucket one object upload (GCS objects appear whole or not at all).

A path is local or `gs://bucket/...`; `check_path` refuses anything else with the fix (`gcs://bkt` -> `gs://bkt`,
`gs:/bkt` -> `gs://bkt`), and `as_path` applies it to every string it is given.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterable, Iterator

import fsspec
from etils import epath

from aple_jax.errors import AplejaxError, CheckpointError, PathError, StorageError, storage_faults

PathLike = str | os.PathLike | epath.Path

# gs:// through gcsfs with a bound on waiting for a server that does not answer (aple_jax/gcs.py), imported on first
# use; etils.epath asks fsspec for "gcs", fsspec.filesystem callers for "gs".
for _protocol in ("gs", "gcs"):
    fsspec.register_implementation(_protocol, "aple_jax.gcs.BoundedGCSFileSystem", clobber=True)

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(/*)(.*)", re.DOTALL)
# Schemes that mean a bucket path misspelled; other URL schemes are refused as unsupported.
_GS_TYPOS = {"gcs", "gc", "g", "gcp", "gsc", "sg", "google", "gsutil", "gfile"}
_URL_SCHEMES = {"s3", "s3a", "s3n", "http", "https", "file", "hdfs", "az", "abfs", "abfss", "adl", "wasb", "wasbs",
                "ftp", "sftp", "ssh", "hf", "memory", "gdrive", "dbfs", "oss", "webdav"}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_FORMS = "expected a local path or gs://<bucket>/<path>"


def path_problem(path: PathLike) -> str | None:
    """What is wrong with how `path` is spelled (an unsupported scheme, a malformed gs:// URI), with the fix; None
    for a local path or a well-formed `gs://bucket/...`."""
    if isinstance(path, epath.Path) or not isinstance(path, (str, os.PathLike)):
        return None
    text = os.fspath(path)
    if not isinstance(text, str):
        return None
    for typo in ("gs//", "gcs//"):
        if text.startswith(typo):
            return f"{text!r} lacks the ':' of a bucket path; did you mean 'gs://{text[len(typo):]}'?"
    match = _URL.fullmatch(text)
    if not match:
        return None
    scheme, slashes, rest = match.groups()
    lower = scheme.lower()
    if lower == "gs" or lower in _GS_TYPOS:
        if scheme == "gs" and slashes == "//":
            return _bucket_problem(text, rest)
        if not rest:
            return f"{text!r} names no bucket; {_FORMS}"
        return f"{text!r} is not a bucket path; did you mean 'gs://{rest}'?"
    if lower == "file" and slashes.startswith("//"):
        return f"{text!r}: file:// URIs are not read; give the local path '/{rest.lstrip('/')}'"
    if slashes == "//" or lower in _URL_SCHEMES:
        return f"{text!r}: {lower}:// paths are not supported; {_FORMS} (copy the files to local disk or a bucket)"
    return None


def _bucket_problem(text: str, rest: str) -> str | None:
    bucket = rest.split("/", 1)[0]
    if not bucket:
        return f"{text!r} names no bucket; {_FORMS}"
    if bucket != bucket.lower() and _BUCKET.fullmatch(bucket.lower()):
        return f"{text!r}: bucket names are lowercase; did you mean 'gs://{bucket.lower()}{rest[len(bucket):]}'?"
    if not _BUCKET.fullmatch(bucket):
        return (f"{text!r}: {bucket!r} is not a bucket name (3 to 63 lowercase letters, digits, '-', '_' and '.', "
                f"starting and ending with a letter or digit)")
    return None


def check_path(path: PathLike, what: str = "") -> PathLike:
    """`path` itself, or a PathError naming it (and `what` it is, e.g. '--workdir') with the fix."""
    problem = path_problem(path)
    if problem:
        raise PathError(f"{what + ' ' if what else ''}{problem}",
                        hint="paths are local (/data/x, runs/x) or in a Cloud Storage bucket (gs://bucket/x)")
    return path


def user_path(text: str) -> str:
    """argparse `type=` for a path argument: refuses a misspelled scheme or bucket URI at parse time."""
    return check_path(text)


def check_dir(path: PathLike, what: str = "") -> PathLike:
    """`path` itself if it can be a directory: well spelled and, on local disk, neither a file nor below one."""
    check_path(path, what)
    if is_remote(path):
        return path
    target = os.path.abspath(os.fspath(path))
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == target else f"is below {existing}, which is a file"
        raise PathError(f"{what + ' ' if what else ''}{os.fspath(path)} {where}; expected a directory",
                        hint="pick a directory path (it is created if missing)")
    return path


def as_path(path: PathLike) -> epath.Path:
    """The `epath.Path` of a local path or `gs://bucket/...` URI (a misspelled one is a PathError)."""
    return path if isinstance(path, epath.Path) else epath.Path(check_path(path))


def is_remote(path: PathLike) -> bool:
    """Whether the path lives in a bucket (`gs://`, `s3://`, ...) rather than on local disk."""
    return "://" in os.fspath(path)


def join(path: PathLike, *parts: str) -> epath.Path:
    return as_path(path).joinpath(*parts)


def bucket_of(path: PathLike) -> epath.Path | None:
    """`gs://bucket` of a remote path; None for a local one."""
    if not is_remote(path):
        return None
    scheme, rest = os.fspath(path).split("://", 1)
    return epath.Path(f"{scheme}://{rest.split('/', 1)[0]}")


def storage_error(path: PathLike, what: str = "") -> Exception:
    """A StorageError for a missing `path`, saying whether its bucket is missing too."""
    bucket = bucket_of(path)
    if bucket is not None and not bucket.exists():
        return StorageError(f"{what + ' ' if what else ''}{path}: bucket {bucket} does not exist",
                            hint="create the bucket (gcloud storage buckets create) or fix the path")
    return StorageError(f"{what + ' ' if what else ''}{path} does not exist")


@contextlib.contextmanager
def faults_named(path: PathLike, doing: str = "write") -> Iterator[None]:
    """`errors.storage_faults`, and a bucket that vanished meanwhile (a FileNotFoundError inside from a library
    writing below `path`) one StorageError saying so."""
    try:
        with storage_faults(path, doing):
            yield
    except AplejaxError:
        raise
    except Exception as e:   # a library writing below `path` names a vanished bucket in many ways
        bucket = bucket_of(path)
        if bucket is None or _exists_or_unknown(bucket):
            raise
        raise storage_error(path, f"cannot {doing}") from e


def _exists_or_unknown(bucket: epath.Path) -> bool:
    """Whether the bucket exists, True where that cannot be asked (the error at hand is then the one to report)."""
    try:
        return bucket.exists()
    except Exception:  # noqa: BLE001 - the storage server's own fault: keep the original error
        return True


def require(path: PathLike, what: str = "") -> epath.Path:
    """`path` as an epath, or a StorageError naming it (and its bucket where that is what is missing)."""
    path = as_path(path)
    with storage_faults(path, "read"):
        if not path.exists():
            raise storage_error(path, what)
    return path


def make_dirs(path: PathLike) -> epath.Path:
    """Creates a local directory with its parents; in a bucket (which has no directories) checks the bucket."""
    path = as_path(check_dir(path))
    with storage_faults(path, "create"):
        if is_remote(path):
            bucket = bucket_of(path)
            if not bucket.exists():
                raise storage_error(path, "directory")
        else:
            path.mkdir(parents=True, exist_ok=True)
    return path


def list_dir(path: PathLike) -> list[tuple[str, bool]]:
    """(name, is_dir) of every entry of a directory, in one listing even in a bucket."""
    path = as_path(path)
    with storage_faults(path, "list"):
        if not is_remote(path):
            with os.scandir(path) as it:
                return [(e.name, e.is_dir()) for e in it]
        fs, root = _fs(path)
        return [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry["type"] == "directory")
                for entry in fs.ls(root, detail=True) if entry["name"].rstrip("/") != root]


def missing_files(root: PathLike, keys: Iterable[str]) -> list[str]:
    """The keys (paths relative to `root`) that name no file; in a bucket from one recursive listing."""
    keys = list(dict.fromkeys(keys))
    root = as_path(root)
    if not is_remote(root):
        return [k for k in keys if not os.path.isfile(os.path.join(root, k))]
    fs, base = _fs(root)
    with storage_faults(root, "list"):
        present = {name[len(base) + 1:] for name in fs.find(base)}
    return [k for k in keys if k not in present]


def glob(pattern: str) -> list[str]:
    """The files matching a glob pattern (`**` crosses folders), local or in a bucket, sorted."""
    if not is_remote(pattern):
        import glob as globbing
        return sorted(p for p in globbing.glob(pattern, recursive=True) if os.path.isfile(p))
    import fsspec
    scheme, rest = pattern.split("://", 1)
    found = fsspec.filesystem(scheme).glob(rest, detail=True)       # one listing, not a request per match
    return sorted(f"{scheme}://{name}" for name, info in found.items() if info.get("type") == "file")


def _fs(path: epath.Path):
    """(fsspec filesystem, bucket/key without scheme) of a remote path."""
    scheme, rest = os.fspath(path).split("://", 1)
    return fsspec.filesystem(scheme), rest.rstrip("/")


def local_copy(path: PathLike) -> str:
    """A local path holding the file or directory `path`: itself when local, else a per-host download, made once
    per version of the objects (weights and tokenizers are read by libraries that need local files)."""
    if not is_remote(path):
        return os.fspath(path)
    path = require(path)
    fs, remote = _fs(path)
    with storage_faults(path, "list"):
        objects = fs.find(remote, detail=True)          # a file lists as itself
    version = repr(sorted((k, v.get("size"), v.get("generation") or v.get("updated")) for k, v in objects.items()))
    key = hashlib.sha256(f"{path}\n{version}".encode()).hexdigest()[:16]
    local = os.path.join(tempfile.gettempdir(), "aple_jax_cache", key, path.name)
    if os.path.exists(local):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.{uuid.uuid4().hex[:8]}.part"
    try:
        with storage_faults(path, f"copy to {local}:"):
            for name in objects:
                target = tmp if name == remote else os.path.join(tmp, name[len(remote) + 1:])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get_file(name, target)
            os.replace(tmp, local)                     # another process may have won: its copy is the same
    except OSError:
        if not os.path.exists(local):
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)
    return local


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Writes `data` so that readers see the old file or the new one, never a part; a storage fault is one
    StorageFaultError naming `path`, the old file kept."""
    path = as_path(path)
    with storage_faults(path, "write"):
        if is_remote(path):
            try:
                path.write_bytes(data)           # one object upload: whole or absent
            except FileNotFoundError:
                raise storage_error(path, "cannot write") from None
            return
        _write_local(path, data)


def _write_local(path: epath.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_npz_atomic(path: PathLike, arrays: dict[str, Any]) -> None:
    """`np.savez` of `arrays`, written atomically."""
    import numpy as np
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def read_json(path: PathLike, hint: str = "") -> Any:
    """A JSON file (local or gs://); a missing or half-written one is a CheckpointError naming the path."""
    path = as_path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): a half-written or "
                              f"edited file?", hint=hint) from None
