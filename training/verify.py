"""`mofe verify`: is every expert FFN tensor bit-identical to its recorded source?

The verdict is model_registry.frozen.frozen_verdict, the same one registration and
`mofe registry verify` state; this module only locates sources for a checkpoint outside the
registry (paths, registry refs, the local Hugging Face cache) and renders the table.
"""

from __future__ import annotations

from pathlib import Path

from model_registry.frozen import FrozenVerdict, frozen_verdict, locate_source
from model_registry.manifest import Manifest


def _resolve_registered(ref: str) -> Path:
    from model_registry.registry import resolve_ref

    return resolve_ref(ref)  # a lookup: writes nothing


def verify_checkpoint(ckpt: Path, check_sources: bool = True) -> FrozenVerdict:
    ckpt = Path(ckpt)
    manifest = Manifest.load(ckpt)
    if check_sources:
        def locate(rec):
            return locate_source(rec, ckpt, _resolve_registered)
    else:
        def locate(rec):
            return "not checked (--no-source)"
    return frozen_verdict(manifest, ckpt, locate)


def render_table(verdict: FrozenVerdict, ckpt: Path):
    from rich.table import Table

    table = Table(title=f"Expert FFN verification: {ckpt}")
    for col in ("expert", "domain", "tensors", "vs mofe.json hashes", "vs source"):
        table.add_column(col)
    for e in verdict.experts:
        m = e.get("manifest")
        if m is None:
            mh = "[yellow]no hashes[/]"
        else:
            n = m["n_mismatched"] + len(m["missing"])
            mh = "[green]identical[/]" if m["ok"] else f"[red]{n} changed[/]"
        sc = e["source_check"]
        src = {"match": "[green]identical[/]",
               "mismatch": f"[red]{sc.get('n_mismatched', 0)} differ[/]"}.get(
            sc["status"], f"[yellow]{sc['status']}[/]: {sc.get('detail', '')}")
        count = m["compared"] if m else sc.get("compared", 0)
        table.add_row(str(e["index"]), e["domain"], str(count), mh, src)
    return table
