"""Errors a user can act on (defined with the data contract in `manifests.errors`)."""

from manifests.errors import FactoryError, NotFound, StorageError

__all__ = ["FactoryError", "NotFound", "StorageError"]
