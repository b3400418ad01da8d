"""model_registry: versioned, verifiable store of MoFE checkpoints (the leaf package).

Imports neither torch nor vLLM. Holds the manifest schema (`mofe.json`), torch-free
checkpoint reading (canonical per-expert tensor hashes, layout conversion) and the registry.
"""

from .manifest import MANIFEST_FILE, Manifest

__all__ = ["MANIFEST_FILE", "Manifest"]
