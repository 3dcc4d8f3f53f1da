"""Datasets under CoOp's few-shot protocol (CoOp folders, TFDS, custom, synthetic) and the grain input pipeline.

`from aple_jax.data.pipeline import train_loader, eval_loader` for the loaders (imports JAX and grain).
"""
from aple_jax.data.errors import (
                                  BadImageError,
                                  DataError,
                                  MissingDataError,
                                  NotEnoughShotsError,
                                  SplitFormatError,
                                  SplitLeakError,
                                  UnknownDatasetError,
)
from aple_jax.data.fewshot import FewShotWarning
from aple_jax.data.records import DatasetSplits, Datum, RecordSource
from aple_jax.data.registry import build_dataset
from aple_jax.data.split_checks import DuplicateEntryWarning

__all__ = ["BadImageError", "DataError", "DatasetSplits", "Datum", "DuplicateEntryWarning", "FewShotWarning",
           "MissingDataError", "NotEnoughShotsError", "RecordSource", "SplitFormatError", "SplitLeakError",
           "UnknownDatasetError", "build_dataset"]
