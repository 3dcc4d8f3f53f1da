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
                         f"{n_dev} devices of the mesh")
    return global_batch_size // jax.process_count()
