"""Errors a user can act on, shared by the data contract and the factory.

The CLI prints any `FactoryError` as one line and exits non-zero without a traceback;
everything else is a bug and keeps its traceback. They live here, with the reader, so
a training job that installs only `manifests` gets the same errors.
"""


class FactoryError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class StorageError(FactoryError):
    """A storage backend could not do what was asked (after its retries)."""


class NotFound(StorageError):
    """The object or folder does not exist."""


class ManifestError(FactoryError):
    """A run or fragment does not follow the contract."""


class RunNotFound(ManifestError):
    """No run at that URI."""


class SchemaVersionError(ManifestError):
    """A fragment written by a schema version this package does not read."""


class BadKey(ManifestError):
    """A sample key or member name that WebDataset readers would mangle or that climbs out of the tar."""


class ResumeRefused(ManifestError):
    """The run was started from a different spec."""
