"""Where a registry lives: the one parser of `--registry` / `$MOFE_REGISTRY`.

Two forms (docs/registry.md, "Team registry"):
  FOLDER                      embedded SQLite (FOLDER/registry.db) + FOLDER/artifacts: one
                              machine. The default is the user data directory.
  postgresql://[USER@]HOST[:PORT]/DBNAME[?LIBPQ-PARAMS][&artifacts=WHERE]
                              PostgreSQL metadata (libpq URL; `postgres://` too). Passwords
                              and TLS settings come from libpq's environment (PGPASSWORD,
                              PGPASSFILE, PGSSLMODE, ...) or the URL; messages never show
                              a password. WHERE: an absolute folder or file:// URL (a
                              folder every user of the registry sees), or an object-store
                              URL (s3://bucket/prefix, any fsspec URL; see `artifact_store`);
                              its local verified cache is
                              $MOFE_REGISTRY_CACHE (deploy/: an emptyDir per pod), else a
                              folder under the user cache directory. Without `artifacts`: a
                              local folder per database under the user data directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import platformdirs

from .errors import LocationError
from .stores import ArtifactStore, MetadataStore

REGISTRY_ENV = "MOFE_REGISTRY"
CACHE_ENV = "MOFE_REGISTRY_CACHE"  # local cache folder of artifacts kept in an object store
DB_FILE = "registry.db"  # the embedded SQLite database inside a registry folder
POSTGRES_SCHEMES = ("postgresql", "postgres")
ARTIFACTS_PARAM = "artifacts"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class RegistryLocation:
    root: Path  # SQLite: the registry folder. PostgreSQL: the local artifact folder (or cache)
    shown: str  # for messages: the location without any password
    conninfo: str | None = None  # PostgreSQL: libpq URL without our own parameters
    artifacts: str | None = None  # artifacts URL as given; None: the folder `root`

    @property
    def is_postgres(self) -> bool:
        return self.conninfo is not None

    @property
    def database(self) -> str:
        """The metadata database, as messages name it."""
        return self.shown.split("?", 1)[0] if self.is_postgres else str(self.root / DB_FILE)


def default_root() -> Path:
    return platformdirs.user_data_path("mofe-registry")


def default_cache() -> Path:
    """Where a node keeps what it downloaded from an object-store registry."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else platformdirs.user_cache_path("mofe-registry")


def parse_location(value: str | os.PathLike | RegistryLocation | None = None
                   ) -> RegistryLocation:
    """Parse a registry location; None: $MOFE_REGISTRY, else the default folder."""
    if isinstance(value, RegistryLocation):  # e.g. Registry(other.location): the same registry
        return value
    if value is None or str(value) == "":
        value = os.environ.get(REGISTRY_ENV) or default_root()
    if isinstance(value, os.PathLike) or not _URL.match(str(value)):
        root = Path(value).expanduser().absolute()
        return RegistryLocation(root=root, shown=str(root))
    return _parse_postgres_url(str(value))


def _parse_postgres_url(text: str) -> RegistryLocation:
    parts = urlsplit(text)
    shown = f"{parts.scheme}://{_hide_password(parts)}{parts.path}"
    scheme = parts.scheme.lower()
    if scheme not in POSTGRES_SCHEMES:
        raise LocationError(f"registry location {shown!r}: unsupported scheme {scheme!r}; "
                            "give a folder (embedded SQLite) or a postgresql:// URL")
    params = parse_qsl(parts.query, keep_blank_values=True)
    artifacts = [v for k, v in params if k == ARTIFACTS_PARAM]
    if len(artifacts) > 1:
        raise LocationError(f"registry URL {shown!r}: '{ARTIFACTS_PARAM}' is given "
                            f"{len(artifacts)} times; give it once")
    query = urlencode([(k, v) for k, v in params if k != ARTIFACTS_PARAM])
    # not urlunsplit: it drops the '//' of an empty host (postgresql:///db?host=/socket)
    conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    try:
        from psycopg.conninfo import conninfo_to_dict

        libpq = conninfo_to_dict(conninfo)  # libpq's own parser: names what it rejects
    except ImportError as exc:
        raise LocationError(f"registry URL {shown!r} needs psycopg 3 ({exc}); "
                            "pip install 'psycopg[binary]'") from None
    except Exception as exc:  # psycopg.ProgrammingError with libpq's message
        raise LocationError(f"registry URL {shown!r}: {str(exc).strip()}") from None
    if not libpq.get("dbname"):
        raise LocationError(f"registry URL {shown!r}: no database name; end the URL with "
                            "/DBNAME (the database must exist; the registry creates its tables)")
    shown = describe_conninfo(libpq)
    if not artifacts:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{libpq.get('host') or 'local'}-"
                      f"{libpq.get('port') or 5432}-{libpq['dbname']}").strip("_")
        root = platformdirs.user_data_path("mofe-team-registry") / slug
        return RegistryLocation(root=root, shown=shown, conninfo=conninfo)
    where = artifacts[0]
    root = _artifact_folder(where, shown)
    return RegistryLocation(root=root, shown=f"{shown}?{ARTIFACTS_PARAM}={where}",
                            conninfo=conninfo, artifacts=where)


def _artifact_folder(where: str, shown: str) -> Path:
    """The local folder of an artifacts location (for an object store: its local cache)."""
    bad = f"registry URL {shown!r}: {ARTIFACTS_PARAM}={where!r}"
    if not where:
        raise LocationError(f"{bad} is empty; give an absolute folder or a URL")
    match = _URL.match(where)
    if match is None:
        path = Path(where).expanduser()
        if not path.is_absolute():
            raise LocationError(f"{bad} is a relative path; give an absolute folder (every "
                                "process resolving this URL must find the same one)")
        return path
    scheme = match.group(1).lower()
    if scheme == "file":
        path = Path(urlsplit(where).path)
        if not path.is_absolute() or urlsplit(where).netloc not in ("", "localhost"):
            raise LocationError(f"{bad}: a file:// URL must be file:///ABSOLUTE/FOLDER")
        return path
    # An object store: artifacts live in the bucket, this folder is the node's local cache.
    cache = os.environ.get(CACHE_ENV)
    if cache:
        if not Path(cache).is_absolute():
            raise LocationError(f"{CACHE_ENV}={cache!r} is a relative path; give an absolute "
                                "folder")
        return Path(cache)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", where).strip("_")
    return platformdirs.user_cache_path("mofe-registry") / slug


def artifact_store(location: RegistryLocation, read_only: bool) -> ArtifactStore:
    """The ArtifactStore of a location.

    A folder (the SQLite registry's, `artifacts=/folder` or `file:///folder`) gets
    FilesystemArtifactStore. Any other URL (s3://bucket/prefix, gs://, ...) gets the fsspec
    FsspecArtifactStore, with `location.root` as the node's local verified cache. S3
    credentials and endpoint come from the environment as boto reads them
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)."""
    from .fs_store import FilesystemArtifactStore

    where = location.artifacts
    if where is None or not _URL.match(where) or where.lower().startswith("file://"):
        return FilesystemArtifactStore(location.root, create=not read_only)
    from .remote_store import FsspecArtifactStore  # fsspec/s3fs only when asked for

    return FsspecArtifactStore(where, location.root)


def metadata_store(location: RegistryLocation, read_only: bool) -> MetadataStore:
    if location.is_postgres:
        from .pg_store import PostgresMetadataStore

        return PostgresMetadataStore(location.conninfo, read_only=read_only,
                                     where=location.database)
    from .sqlite_store import SQLiteMetadataStore

    return SQLiteMetadataStore(location.root / DB_FILE, read_only=read_only)


def open_registry(value: str | os.PathLike | None = None, *, read_only: bool = False):
    """The Registry at a folder or URL (None: $MOFE_REGISTRY, else the default folder)."""
    from .registry import Registry

    return Registry(value, read_only=read_only)


def describe_conninfo(params: dict[str, str]) -> str:
    """postgresql://user@host:port/dbname of parsed libpq parameters: never the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{params.get('host', '')}{port}/{params.get('dbname', '')}"


def _hide_password(parts) -> str:
    netloc = parts.netloc
    if parts.password is None:
        return netloc
    userinfo, _, hostinfo = netloc.rpartition("@")
    return f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
