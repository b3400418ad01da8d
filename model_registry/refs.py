"""Model names, aliases and references (NAME, NAME@3, NAME@prod, or a plain path)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidNameError

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
_VERSION = re.compile(r"^v?(\d{1,9})$")
LATEST = "latest"


def validate_name(name: str, what: str = "model name") -> str:
    """Names become directory names under the registry root: keep them to one safe segment."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            f"starting with a letter or digit (pattern {NAME_PATTERN})")
    return name


def validate_alias(alias: str) -> str:
    validate_name(alias, "alias")
    if _VERSION.fullmatch(alias):
        raise InvalidNameError(f"invalid alias {alias!r}: it would read as a version number")
    if alias == LATEST:
        raise InvalidNameError(f"invalid alias {alias!r}: 'latest' is reserved")
    return alias


def parse_version(text: str | int) -> int:
    m = _VERSION.fullmatch(str(text))
    if not m or int(m[1]) < 1:
        raise InvalidNameError(f"invalid version {text!r}: expected a positive integer like 3")
    return int(m[1])


@dataclass(frozen=True)
class Ref:
    """A parsed registry reference. `version` and `alias` are never both set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> Ref:
    """Parse NAME, NAME@VERSION, NAME@vVERSION, NAME@ALIAS or NAME@latest; raise if malformed."""
    name, sep, tag = text.partition("@")
    validate_name(name)
    if not sep or tag == LATEST:
        return Ref(name)
    if _VERSION.fullmatch(tag):
        return Ref(name, version=parse_version(tag))
    return Ref(name, alias=validate_alias(tag))


def looks_like_path(text: str) -> bool:
    """A REF with a path separator, a leading '.' or '~' is always a path, never a name."""
    return "/" in text or "\\" in text or text.startswith((".", "~")) or Path(text).is_absolute()
