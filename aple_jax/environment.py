"""The environment that produced a result: package versions, backend and devices, XLA/JAX settings, dtype, commit.

`collect` is what every run's results.json (and its config.json header) records under "environment";
`shaping` keeps the fields that can change the numbers, so that a report can say when one table mixes several.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable

# The packages whose versions shape the numbers (computation, data decoding, tokenization, checkpoints).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pillow", "grain", "transformers")
# jax.config options that change what a program computes.
JAX_OPTIONS = ("jax_default_matmul_precision", "jax_enable_x64", "jax_threefry_partitionable",
               "jax_default_prng_impl", "jax_numpy_dtype_promotion")
# Environment variables read besides JAX_*/XLA_* (which are all kept, but for those that only say where to connect,
# what to cache or how much memory to take).
EXTRA_VARIABLES = ("LIBTPU_INIT_ARGS", "NVIDIA_TF32_OVERRIDE")
_NOT_SHAPING_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_PLATFORMS",
                          "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_", "XLA_PYTHON_CLIENT_")
# The fields of an environment that can change a number; python and the OS platform string are recorded, not compared.
SHAPING_FIELDS = ("packages", "backend", "device_kind", "device_count", "process_count", "cpu", "jax_config",
                  "variables", "dtype", "aple_jax")
_GIT_TIMEOUT_S = 5
_ROOT = Path(__file__).resolve().parent.parent      # the checkout holding this package (if it is one)


def collect(dtype: str | None = None) -> dict[str, Any]:
    """This process's environment; `dtype` is the run's compute dtype (config backbone.dtype)."""
    import jax

    devices = jax.devices()
    return {
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "jax_config": {name: _jsonable(getattr(jax.config, name, None)) for name in JAX_OPTIONS},
        "variables": relevant_variables(os.environ),
        "dtype": dtype,
        "aple_jax": project_version(),
    }


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def relevant_variables(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """XLA_FLAGS, the JAX_*/XLA_* variables that can change a result, LIBTPU_INIT_ARGS, NVIDIA_TF32_OVERRIDE."""
    return {k: environ[k] for k in sorted(environ)
            if (k.startswith(("JAX_", "XLA_")) or k in EXTRA_VARIABLES) and not k.startswith(_NOT_SHAPING_VARIABLES)}


def cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def project_version() -> dict[str, Any]:
    """aple-jax's version, and the git commit and dirty flag when it runs from a checkout (None without git)."""
    version = None
    pyproject = _ROOT / "pyproject.toml"
    if pyproject.is_file():
        try:
            version = tomllib.loads(pyproject.read_text()).get("project", {}).get("version")
        except (OSError, tomllib.TOMLDecodeError):
            version = None
    if version is None:
        try:
            version = importlib.metadata.version("aple-jax")
        except importlib.metadata.PackageNotFoundError:
            pass
    commit = _git("rev-parse", "HEAD") if (_ROOT / ".git").exists() else None
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"version": version, "commit": commit, "dirty": dirty}


def _git(*args: str) -> str | None:
    """`git -C <checkout> args` without a terminal, bounded in time; None if git is absent or fails."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=_GIT_TIMEOUT_S, env=env, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# ---------------------------------------------------------------------------------------------------- comparing

def shaping(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of an environment that can change a number, flat (`packages.jax`, `variables.XLA_FLAGS`, ...)."""
    out: dict[str, Any] = {}
    for field in SHAPING_FIELDS:
        value = env.get(field)
        if field == "aple_jax" and isinstance(value, dict):
            value = {k: value.get(k) for k in ("version", "commit")}   # a dirty tree is reported, not compared
        if isinstance(value, dict):
            out.update({f"{field}.{k}": v for k, v in sorted(value.items())})
        else:
            out[field] = value
    return out


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    sa, sb = shaping(a), shaping(b)
    return sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))


def describe(env: dict[str, Any]) -> str:
    """One line: the packages, devices, settings and commit of an environment."""
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    devices = f"{env.get('backend')} ({env.get('device_kind')}) x{env.get('device_count')}"
    if env.get("process_count", 1) != 1:
        devices += f" in {env['process_count']} processes"
    parts = [packages, devices, f"CPU {env.get('cpu')}", f"dtype {env.get('dtype')}"]
    options = {k: v for k, v in (env.get("jax_config") or {}).items() if v not in (None, False)}
    parts.append(", ".join(f"{k}={v}" for k, v in options.items()))
    parts += [f"{k}={v}" for k, v in (env.get("variables") or {}).items()]
    project = env.get("aple_jax") or {}
    if project.get("commit"):
        parts.append(f"aple-jax {project.get('version')} @ {project['commit'][:10]}"
                     + (" (uncommitted changes)" if project.get("dirty") else ""))
    elif project.get("version"):
        parts.append(f"aple-jax {project['version']}")
    parts.append(f"python {env.get('python')}")
    return "; ".join(p for p in parts if p)


def run_environments(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The environments a run's results.json records (the one that finished it, and the one that started it when
    they differ); empty for runs written before environments were recorded."""
    return [e for e in (results.get("environment"), results.get("environment_at_start")) if e]


def summarize(runs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The distinct environments (by their number-shaping fields) of (path, results) pairs: each with its run count,
    the fields in which they differ, and the runs that record none."""
    distinct: list[dict[str, Any]] = []
    unrecorded: list[str] = []
    for path, results in runs:
        envs = run_environments(results)
        if not envs:
            unrecorded.append(path)
        for env in envs:
            key = shaping(env)
            entry = next((d for d in distinct if d["key"] == key), None)
            if entry is None:
                distinct.append(entry := {"key": key, "environment": env, "runs": 0})
            entry["runs"] += 1
    fields = sorted({f for d in distinct for f in differing_fields(distinct[0]["environment"], d["environment"])})
    return {"environments": [{"runs": d["runs"], "environment": d["environment"]} for d in distinct],
            "mixed": len(distinct) > 1, "differing": fields, "not_recorded": unrecorded}


def markdown_note(summary: dict[str, Any]) -> str:
    """The lines printed under a table: its environment(s), loudly when it mixes several."""
    lines = []
    envs = summary["environments"]
    if summary["mixed"]:
        lines.append(f"**Warning: this table mixes {len(envs)} environments** (they differ in "
                     f"{', '.join(summary['differing'])}); its numbers may not be comparable:")
    for i, e in enumerate(envs, 1):
        prefix = f"Environment {i} ({e['runs']} runs)" if len(envs) > 1 else "Environment"
        lines.append(f"{prefix}: {describe(e['environment'])}")
    if summary["not_recorded"]:
        lines.append(f"environment not recorded: {len(summary['not_recorded'])} runs (written before results.json "
                     f"recorded it, or rebuilt from an aggregate)")
    return "\n".join(f"- {line}" if len(lines) > 1 else line for line in lines)


def for_results(dtype: str | None, started: dict[str, Any] | None) -> dict[str, Any]:
    """results.json's environment keys: the finishing environment, and `started` (config.json's, the environment
    that began the run) as `environment_at_start` when a resume changed a number-shaping field."""
    env = collect(dtype)
    out: dict[str, Any] = {"environment": env}
    if started and differing_fields(started, env):
        out["environment_at_start"] = started
    return out


if __name__ == "__main__":
    import json
    json.dump(collect(), sys.stdout, indent=1)
