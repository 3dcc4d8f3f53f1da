"""Device mesh, placement of frozen/replicated state and of sharded batches, multi-host start."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None, auto: bool = False) -> None:
    """Starts `jax.distributed` when asked to by arguments or by JAX_COORDINATOR_ADDRESS etc.; with `auto` and no
    coordinator, through JAX's own cluster detection (Cloud TPU pod slices, SLURM, Open MPI)."""
    if jax.distributed.is_initialized():
        return
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator:
        if auto:
            jax.distributed.initialize()
        return
    # Cross-process collectives on CPU hosts go through gloo; GPU and TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    num_processes = num_processes or int(os.environ["JAX_NUM_PROCESSES"])
    process_id = process_id if process_id is not None else int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis ('data',) mesh over all devices of all processes, with Auto axes."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_devices(global_batch_size: int, devices: list | None = None) -> list:
    """The devices of the data axis for a global batch: the largest count that divides the batch, is a multiple
    of the process count and fits, taken equally from every process (the rest stay idle); the batch never changes.
    """
    devices = jax.devices() if devices is None else devices
    procs = sorted({d.process_index for d in devices})
    per_proc = min(sum(d.process_index == p for d in devices) for p in procs)
    fits = [k for k in range(per_proc, 0, -1) if global_batch_size % (k * len(procs)) == 0]
    if not fits:
        from aple_jax.errors import ConfigError
        raise ConfigError(f"batch_size={global_batch_size} cannot be split over {len(procs)} processes: it must be "
                          f"a multiple of the process count", hint="raise batch_size or run fewer processes")
    return [d for p in procs for d in [d for d in devices if d.process_index == p][:fits[0]]]


def describe_data_devices(chosen: list, global_batch_size: int) -> str | None:
    """The one line said at start when the data axis leaves devices idle; None when it uses them all."""
    total = jax.device_count()
    if len(chosen) == total:
        return None
    return (f"devices: batch_size={global_batch_size} is split over {len(chosen)} of the {total} devices "
            f"(the largest count that divides it); {total - len(chosen)} stay idle. A larger batch uses more; "
            f"packed seeds (--config.pack_seeds=1,2,3) give the devices in use more work per step")


def padded_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """An evaluation batch rounded up to a multiple of the mesh's devices (padding is masked out)."""
    n_dev = mesh.devices.size
    return -(-global_batch_size // n_dev) * n_dev


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's slice of a global batch into global arrays sharded on the data axis."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The slice of a global batch that this process feeds; the global batch must divide by devices."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise ValueError(f"global batch size {global_batch_size} must be a multiple of the "
                         f"{n_dev} devices of the mesh (make the mesh with data_devices(batch size))")
    return global_batch_size // jax.process_count()
