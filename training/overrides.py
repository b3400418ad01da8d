"""Config plumbing: relative-path resolution and `--set a.b=c` overrides (YAML-typed values)."""

from __future__ import annotations

from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


# Keys whose values are filesystem paths (resolved against the config file's directory).
def resolve_paths(raw: dict, base: Path) -> None:
    def fix(d: dict, key: str) -> None:
        v = d.get(key)
        if isinstance(v, str) and v and not Path(v).is_absolute():
            candidate = (base / v)
            # A hub id ("org/name") stays as is unless a local directory of that name exists.
            if key == "source" and not candidate.exists() and looks_like_hub_id(v):
                return
            d[key] = str(candidate.resolve())

    for key in ("output_dir", "model"):
        fix(raw, key)
    merge = raw.get("merge")
    if isinstance(merge, dict):
        fix(merge, "output")
        if isinstance(merge.get("base_model"), str):
            merge["base_model"] = {"source": merge["base_model"]}
        if isinstance(merge.get("base_model"), dict):
            fix(merge["base_model"], "source")
        for e in merge.get("experts") or []:
            if isinstance(e, dict):
                fix(e, "source")
    data = raw.get("data")
    if isinstance(data, dict):
        for split in ("train", "eval"):
            files = data.get(split)
            if isinstance(files, str | dict):
                files = data[split] = [files]
            if isinstance(files, list):
                files[:] = [{"path": f} if isinstance(f, str) else f for f in files]
                for f in files:
                    if isinstance(f, dict):
                        fix(f, "path")


def looks_like_hub_id(s: str) -> bool:
    return (s.count("/") == 1 and not s.startswith((".", "/", "~"))
            and all(part for part in s.split("/")))


def parse_override(text: str) -> tuple[list[str], object]:
    """'a.b=c' -> (['a','b'], value); the value is parsed as YAML (so 3 -> int, true -> bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. training.max_steps=20)")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_override(raw: dict, parts: list[str], value: object) -> None:
    """Set raw[a][b]... = value; a numeric part indexes a list (merge.experts.0.source=...)."""
    key = ".".join(parts)
    node: object = raw
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {key}: {p!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
        else:
            raise ConfigError(f"--set {key}: {parts[i - 1]!r} is not a section")
