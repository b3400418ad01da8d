"""Rich tables and trees for the registry CLI (humans); the CLI's --json is for machines."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from .stores import ModelSummary, VersionInfo


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def models_table(models: list[ModelSummary]) -> Table:
    t = Table(title="Registered models")
    for col in ("name", "versions", "latest", "aliases", "updated"):
        t.add_column(col)
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        t.add_row(m.name, str(m.versions), str(m.latest), aliases, m.updated_at)
    return t


def versions_table(name: str, versions: list[VersionInfo]) -> Table:
    t = Table(title=f"Versions of {name}")
    for col in ("version", "aliases", "created", "kind", "storage", "layout", "stock vLLM",
                "frozen", "size"):
        t.add_column(col)
    for v in versions:
        t.add_row(str(v.version), ", ".join(v.aliases), v.created_at, v.kind, v.storage,
                  v.layout + (" (converted)" if v.converted else ""),
                  "yes" if v.vllm_loadable else "no", v.frozen_check, size(v.total_bytes))
    return t


def show(console: Console, info: VersionInfo, path: str) -> None:
    t = Table(title=info.ref, show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    c = info.config
    rows = [("aliases", ", ".join(info.aliases) or "-"), ("created", info.created_at),
            ("path", path), ("storage", info.storage), ("registered from", info.source_path),
            ("kind", info.kind),
            ("layout", f"{info.layout} (from {info.source_layout}, converted)" if info.converted
             else info.layout),
            ("stock vLLM loads it", "yes" if info.vllm_loadable else
             "no: mofe serve reads it; for stock vLLM run mofe convert"),
            ("experts / top-k", f"{c.get('num_local_experts', '-')} / "
                                f"{c.get('num_experts_per_tok', '-')}"),
            ("layers / hidden / vocab", f"{c.get('num_hidden_layers')} / {c.get('hidden_size')}"
                                        f" / {c.get('vocab_size')}"),
            ("files", f"{len(info.files)} ({size(info.total_bytes)})"),
            ("frozen check", f"{info.frozen_check}: {info.frozen_details.get('summary', '')}")]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    experts = info.frozen_details.get("experts")
    if experts:
        et = Table(title="Frozen experts")
        for col in ("expert", "domain", "manifest hashes", "source", "source check"):
            et.add_column(col)
        for e in experts:
            m = e.get("manifest")
            mh = "-" if m is None else ("match" if m["ok"] else
                                        f"MISMATCH {m['mismatched'] + m['missing']}")
            sc = e["source_check"]
            et.add_row(str(e["index"]), e["domain"], f"{mh}", e["source"],
                       f"{sc['status']}" + (f": {sc['detail']}" if sc.get("detail") else ""))
        console.print(et)
    if info.evals:
        ev = Table(title="Evaluations")
        for col in ("task", "metric", "value", "split", "harness", "recorded"):
            ev.add_column(col)
        for e in info.evals:
            ev.add_row(e.task, e.metric, f"{e.value:.4g}", e.split or "-", e.harness or "-",
                       e.created_at)
        console.print(ev)


def _src_label(s: dict[str, Any]) -> str:
    reg = (f" [green]registered as {s['registered']}[/] (by {s['matched_by']})"
           if s["registered"] else " [dim](not registered)[/]")
    rev = f" @ {s['revision']}" if s.get("revision") else ""
    return f"{s['source']}{rev}{reg}"


def lineage_tree(node: dict[str, Any], tree: Tree | None = None) -> Tree:
    label = (f"[bold]{node['ref']}[/] ({node['kind']}, frozen check: {node['frozen_check']})"
             + (f" aliases: {', '.join(node['aliases'])}" if node["aliases"] else ""))
    tree = tree.add(label) if tree else Tree(label)
    if "note" in node:
        tree.add(f"[dim]{node['note']}[/]")
    if "parent" in node:
        p = tree.add(f"parent (merged): {_src_label(node['parent'])}")
        if "lineage" in node["parent"]:
            lineage_tree(node["parent"]["lineage"], p)
    if "base_model" in node:
        tree.add(f"base model: {_src_label(node['base_model'])}")
    if node.get("experts"):
        ex = tree.add(f"experts ({len(node['experts'])})")
        for e in node["experts"]:
            checks = ", ".join(f"{k.replace('_', ' ')} {e[k]}" for k in
                               ("manifest_hashes", "source_check") if e.get(k))
            ex.add(f"[bold]{e['index']}[/] {e['domain']}: {_src_label(e)}\n"
                   f"sha256 digest {e['digest']} over {e['tensors']} tensors"
                   + (f"; {checks}" if checks else ""))
    return tree


def family_table(ref: str, members: list) -> Table:
    """Members of REF's family (model_registry/family.py) and what sets each apart."""
    shared = members[0].shared_tensors if members else 0
    t = Table(title=f"Family of {ref}: {len(members)} version(s) sharing {shared} expert "
                    "tensor(s)")
    for col in ("member", "aliases", "created", "frozen", "size", "differs from " + ref):
        t.add_column(col)
    for m in members:
        t.add_row(f"[bold]{m.ref}[/]" if m.is_ref else m.ref, ", ".join(m.aliases) or "-",
                  m.created_at, m.frozen_check, size(m.total_bytes), m.summary)
    return t
