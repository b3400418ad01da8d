"""model_registry: versioned, verifiable store of MoFE checkpoints (the leaf package).

Imports neither torch nor vLLM. Holds the checkpoint format (checkpoint.py: tensor names of
both layouts, slicing, canonical hashes, the dtype rule, conversion, atomic writes; see
docs/format.md), the one frozen-claim verdict (frozen.py), the manifest schema (`mofe.json`)
and the registry.

Registry (registry.py) is written against two small interfaces (stores.py):
  MetadataStore  versions, file and expert-tensor hashes, aliases, evals. Its one hard
                 requirement: `publish` allocates the next version number and writes every row
                 in ONE transaction. SQLiteMetadataStore (sqlite_store.py; WAL, busy_timeout,
                 BEGIN IMMEDIATE) for one machine, PostgresMetadataStore (pg_store.py; psycopg
                 3, an advisory write lock) for a team; both run the same queries
                 (SQLMetadataStore) on the same schema (schema.py, versioned and migrated).
  ArtifactStore  content-addressed version directories (cas.py): a version's own tensors and
                 files, plus hard links to expert blobs stored once for every version that
                 shares them. Stage locally, upload, publish under a key inside the metadata
                 transaction, hand back a local directory. FilesystemArtifactStore (fs_store.py;
                 <root>/artifacts/<name>/v<N>, <root>/blobs) and FsspecArtifactStore
                 (remote_store.py; any fsspec URL, e.g. s3://, read through a verified
                 per-node cache keyed by content).
Where a registry lives (a folder, or postgresql://...?artifacts=...) is parsed in config.py.
Families (family.py): versions whose expert tensors are identical.
"""

from .manifest import MANIFEST_FILE, Manifest

__all__ = ["MANIFEST_FILE", "Manifest", "Registry", "open_registry", "resolve_ref"]


def __getattr__(name: str):
    # Lazy: `import model_registry` (for the manifest) should not open sqlite or rich.
    if name in ("Registry", "resolve_ref"):
        from . import registry

        return getattr(registry, name)
    if name == "open_registry":
        from .config import open_registry

        return open_registry
    raise AttributeError(f"module 'model_registry' has no attribute {name!r}")
