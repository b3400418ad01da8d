"""training: merge dense experts into a Mixtral MoE, freeze expert FFNs, instruction-tune, verify."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mofe-serve")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
