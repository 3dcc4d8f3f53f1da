"""Images packed in ArrayRecord files (made by `python -m aple_jax.data.to_array_record`) and their loader."""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from aple_jax import paths
from aple_jax.data.errors import MissingDataError, SplitFormatError, see_docs
from aple_jax.data.image_files import decode_stream

INDEX_FILE = "image_records.json"
FORMAT = "aple-jax-array-record-1"
SECTION = "ArrayRecord copies"


def index_path(dataset_dir: str) -> str:
    """Where a converted dataset folder keeps its index (key -> record position)."""
    return os.path.join(dataset_dir, INDEX_FILE)


def has_array_records(dataset_dir: str) -> bool:
    """Whether `dataset_dir` is a converted copy (its images are in ArrayRecord files)."""
    return paths.as_path(index_path(dataset_dir)).is_file()


class ArrayRecordImages:
    """Loader of a converted dataset folder: key (image path relative to the image root) -> uint8 (H, W, 3).

    Picklable for grain workers: the index and the ArrayRecord files are opened lazily, once per process.
    Remote shards (gs://) are read from a per-host local copy (`paths.local_copy`).
    """

    def __init__(self, dataset_dir: str):
        self.dataset_dir = dataset_dir
        self._positions: dict[str, int] | None = None
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_dir": self.dataset_dir, "_positions": None, "_source": None}

    def _index(self) -> dict[str, Any]:
        path = index_path(self.dataset_dir)
        index = paths.read_json(path) if paths.as_path(path).is_file() else None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise SplitFormatError(f"{path} is not an index written by aple_jax.data.to_array_record "
                                   f"(format {FORMAT!r}). " + see_docs(SECTION))
        return index

    @property
    def positions(self) -> dict[str, int]:
        """Record position of every packed image key."""
        if self._positions is None:
            self._positions = {k: i for i, k in enumerate(self._index()["keys"])}
        return self._positions

    def _records(self) -> Any:
        if self._source is None:
            from grain.sources import ArrayRecordDataSource
            shards = [paths.local_copy(os.path.join(self.dataset_dir, s)) for s in self._index()["shards"]]
            self._source = ArrayRecordDataSource(shards)
        return self._source

    def check_keys(self, keys: Iterable[str], what: str) -> None:
        """Raises MissingDataError naming the first keys of `keys` that the ArrayRecord files do not hold."""
        missing = [k for k in dict.fromkeys(keys) if k not in self.positions]
        if missing:
            raise MissingDataError(f"{len(missing)} image(s) listed in {what} are not in the ArrayRecord files "
                                   f"of {self.dataset_dir}, e.g. {', '.join(missing[:3])}. Convert the dataset "
                                   f"again. " + see_docs(SECTION))

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.positions:
            self.check_keys([key], "the split")
        data = self._records()[self.positions[key]]
        return decode_stream(io.BytesIO(data), f"{key} (in {index_path(self.dataset_dir)})")

    def __repr__(self) -> str:
        return f"ArrayRecordImages({self.dataset_dir!r})"
