"""Errors raised by the data package; each names the path or value at fault and points to docs/data.md."""
from __future__ import annotations

from aple_jax.errors import AplejaxError

DOCS = "docs/data.md"


class DataError(AplejaxError):
    """Base class of the data package's errors: data that is missing, malformed or contradicts itself."""


class MissingDataError(DataError, FileNotFoundError):
    """A dataset directory, split file or listed image is absent."""


class BadImageError(DataError, OSError):
    """An image file exists but cannot be decoded."""


class UnknownDatasetError(DataError, ValueError):
    """A dataset or TFDS builder name that the package does not know."""


class NotEnoughShotsError(DataError, ValueError):
    """A class has fewer images than the requested shots and strict shots were asked for."""


class EmptySplitError(DataError, ValueError):
    """An evaluation split, or a class of it, with no images: its accuracy would mean nothing."""


class SplitFormatError(DataError, ValueError):
    """A split or class-name file whose content does not follow CoOp's format."""


class SplitLeakError(DataError, ValueError):
    """An image listed in the training split and in an evaluation split: its accuracy would be inflated."""


def see_docs(section: str = "") -> str:
    """The pointer appended to every message: where the expected layout is described."""
    return f"See {DOCS}" + (f" ({section})" if section else "") + " for the expected layout."
