"""The `mofe` command line: one entry point that dispatches lazily to each package.

`training` and `mofe_serve` never import each other, and `model_registry` is a leaf, so the
dispatcher lives in its own small package. Subcommands are named here by import string and
imported only when invoked, so `mofe --help` and `mofe registry --help` load neither torch
nor vLLM.
"""
