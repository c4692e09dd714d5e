"""Errors a user can act on.

The CLI prints any `FactoryError` as one line and exits non-zero without a
traceback; everything else is a bug and keeps its traceback.
"""


class FactoryError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class StorageError(FactoryError):
    """A storage backend could not do what was asked (after its retries)."""


class NotFound(StorageError):
    """The object or folder does not exist."""
