"""Errors the registry raises; every message names the model, file or field at fault."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class: the CLI prints the message and exits non-zero."""


class InvalidNameError(RegistryError, ValueError):
    pass


class NotFoundError(RegistryError, LookupError):
    pass


class ConflictError(RegistryError):
    """The operation would break an invariant (e.g. delete a version an alias points at)."""


class InvalidCheckpointError(RegistryError, ValueError):
    pass


class SchemaError(RegistryError):
    """The database has a schema this code cannot read or migrate."""


class UnsafePathError(RegistryError):
    """A stored artifact location escapes the registry root."""


class LocationError(RegistryError, ValueError):
    """MOFE_REGISTRY / --registry is neither a folder nor a registry URL we can use."""
