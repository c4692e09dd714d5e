"""Errors of the data contract; all are `FactoryError`s, so the CLI prints one line."""

from factory.errors import FactoryError


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
