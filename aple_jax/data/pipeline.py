"""grain input pipelines: infinite shuffled training batches and padded, masked evaluation batches,
delivered as global arrays sharded on the mesh's `data` axis."""
from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from grain.multiprocessing import SharedMemoryArray
from jax.sharding import Mesh

from aple_jax import paths, preemption
from aple_jax.data.elements import BatchLayout, EvalElement, TrainElement
from aple_jax.data.transforms import CLIP_CROP_SCALE
from aple_jax.errors import CheckpointError, ConfigError
from aple_jax.sharding import local_batch_size, padded_batch_size, shard_batch

PREFETCH_BATCHES = 2
MAX_THREADS = 8  # decoding threads when no worker processes are asked for (PIL releases the GIL)
BUCKET_READS = 32  # reads in flight per process from a bucket: each waits on the network, not on a core


def _layout(global_batch_size: int, mesh: Mesh) -> BatchLayout:
    return BatchLayout(global_batch_size, local_batch_size(global_batch_size, mesh), jax.process_index())


def _reads_bucket(source: Sequence[dict[str, Any]]) -> bool:
    """Whether the source's images are objects in a bucket (gs://...)."""
    return paths.is_remote(getattr(getattr(source, "loader", None), "root", "") or "")


def _to_iter(ds: grain.MapDataset, num_workers: int, bucket: bool = False) -> grain.IterDataset:
    """Threads decode batches in this process; with `num_workers` > 0, worker processes do. From a bucket,
    BUCKET_READS threads per process (split among the workers) keep enough object reads in flight."""
    if bucket:
        threads = max(1, BUCKET_READS // max(1, num_workers))
    else:
        threads = min(MAX_THREADS, os.cpu_count() or 1) if num_workers == 0 else 1
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(PREFETCH_BATCHES, threads)))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; outside an absl app
            flags.FLAGS.mark_as_parsed()  # (tests, notebooks) they keep their defaults
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=PREFETCH_BATCHES),
                            worker_init_fn=preemption.ignore_in_worker)   # Ctrl-C reaches the whole group
    return it


def _unlink(leaf: Any) -> None:
    """Removes the name of a worker's shared-memory array now; the memory stays mapped while the array (or a
    device buffer aliasing it) lives and is freed with it."""
    if isinstance(leaf, SharedMemoryArray) and leaf._unlink_on_del:   # pylint: disable=protected-access
        leaf.shm.unlink()
        leaf._unlink_on_del = False                                   # pylint: disable=protected-access


def _unlinked(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its shared-memory names removed on arrival: grain unlinks each only when its array is
    deleted, asynchronously, so arrays alive (or queued for deletion) at exit were left to Python's
    resource_tracker ("leaked shared_memory objects")."""
    for leaf in batch.values():
        _unlink(leaf)
    return batch


def _close(iterator: grain.DatasetIterator, workers: bool) -> None:
    """Stops prefetching and the worker processes; with workers, also unlinks the batches fetched ahead that
    grain's closed iterator still holds in its thread buffers (they would outlive the process otherwise)."""
    iterator.close()
    if workers:
        for obj in gc.get_objects():
            if type(obj) is SharedMemoryArray:   # not isinstance: that reads `__class__`, which some proxies
                _unlink(obj)                     # (torch.distributed.reduce_op) answer with a FutureWarning


class TrainLoader(Iterator[dict[str, jax.Array]]):
    """Infinite iterator over training batches; `get_state`/`set_state` resume the exact sequence."""

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh, steps_per_epoch: int, num_workers: int = 0):
        self._iterator = iter(dataset)
        self._num_workers = num_workers
        self._mesh = mesh
        self._steps_per_epoch = steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    def __next__(self) -> dict[str, jax.Array]:
        return shard_batch(_unlinked(next(self._iterator)), self._mesh)

    def get_state(self) -> dict[str, Any]:
        """The position, with the worker count whose iterator it belongs to (the batches do not depend on it)."""
        return {"num_workers": self._num_workers, "iterator": self._iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Goes to a `get_state` position (or a bare grain state, as checkpoints before the worker count held)."""
        saved = state.get("num_workers", self._num_workers) if "iterator" in state else self._num_workers
        if saved != self._num_workers:
            raise CheckpointError(f"the checkpoint's data-iterator position was saved with dataset.num_workers="
                                  f"{saved}; this run has {self._num_workers}",
                                  hint=f"resume with --config.dataset.num_workers={saved} (the batches are the same "
                                       f"with any count; only the saved position depends on it)")
        self._iterator.set_state(state["iterator"] if "iterator" in state else state)

    def close(self) -> None:
        """Stops prefetching and the worker processes."""
        _close(self._iterator, self._num_workers > 0)


def train_loader(source: Sequence[dict[str, Any]], *, global_batch_size: int, image_size: int, seed: int,
                 mesh: Mesh, num_workers: int = 0, augment: bool = True,
                 crop_scale: tuple[float, float] = CLIP_CROP_SCALE) -> TrainLoader:
    """Seeded per-epoch shuffling, drop-last batches, repeated forever; each process feeds its slice."""
    if len(source) < global_batch_size:
        raise ConfigError(f"the training set has {len(source)} images, fewer than the global batch size "
                         f"{global_batch_size}: lower the batch size (drop-last would leave no batch)")
    layout = _layout(global_batch_size, mesh)
    element = TrainElement(source, layout, image_size, seed, augment, crop_scale)
    ds = grain.MapDataset.range(sys.maxsize // global_batch_size * layout.local_batch_size).map(element)
    ds = ds.batch(layout.local_batch_size, drop_remainder=True)
    return TrainLoader(_to_iter(ds, num_workers, _reads_bucket(source)), mesh, element.steps_per_epoch, num_workers)


class EvalLoader:
    """Re-iterable evaluation batches with "mask"; every example appears exactly once per pass."""

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh, num_batches: int, workers: bool = False):
        self._dataset, self._mesh, self._num_batches, self._workers = dataset, mesh, num_batches, workers

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        iterator = iter(self._dataset)
        try:
            for batch in iterator:
                yield shard_batch(_unlinked(batch), self._mesh)
        finally:
            _close(iterator, self._workers)


def eval_loader(source: Sequence[dict[str, Any]], *, global_batch_size: int, image_size: int, mesh: Mesh,
                num_workers: int = 0) -> EvalLoader:
    """Sequential batches; the last one is padded to full size with mask False on the padding. The batch is
    rounded up to a multiple of the mesh's devices (which changes no result)."""
    global_batch_size = padded_batch_size(global_batch_size, mesh)
    layout = _layout(global_batch_size, mesh)
    num_batches = -(-len(source) // global_batch_size)
    ds = grain.MapDataset.range(num_batches * layout.local_batch_size).map(EvalElement(source, layout, image_size))
    ds = ds.batch(layout.local_batch_size, drop_remainder=True)
    return EvalLoader(_to_iter(ds, num_workers, _reads_bucket(source)), mesh, num_batches, workers=num_workers > 0)


def host_batches(loader: EvalLoader | TrainLoader) -> Iterator[dict[str, np.ndarray]]:
    """The batches of a loader fetched back to the host (for tests and tools)."""
    for batch in loader:
        yield jax.device_get(batch)
