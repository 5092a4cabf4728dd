"""The one error type of the data package."""
from __future__ import annotations


class DataError(RuntimeError):
    """A data set could not be found, downloaded, verified or read.  The message says which
    file and what to do about it."""
