"""Merge a base model and N dense Llama experts into a Mixtral MoE with mergekit's library.

mergekit does the merge (router init from positive/negative prompt hidden states, expert
stacking); this module adds what it lacks: validation before heavy work, exceptions instead
of sys.exit, an atomic output directory, the per-expert layout and the `mofe.json` manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from model_registry.checkpoint import convert_checkpoint, expert_hashes
from model_registry.manifest import (
    MANIFEST_FILE,
    ExpertRecord,
    FreezeSpec,
    Manifest,
    MergeRecord,
    ModelSource,
)

from .config import MergeConfig
from .sources import MergeError, check_compatible, local_dir

log = logging.getLogger(__name__)


def project_version() -> str:
    try:
        return version("mofe-serve")
    except PackageNotFoundError:
        return "0+unknown"


def mergekit_config(merge: MergeConfig, resolved: list[str]) -> dict:
    """mergekit's MoE YAML schema, from ours (resolved[0] is the base, then the experts).

    `resolved` are local directories (hub ids already fetched at their revision), so mergekit
    never touches the network itself."""
    experts = []
    for e, path in zip(merge.experts, resolved[1:], strict=True):
        item: dict = {"source_model": path}
        if e.positive_prompts:
            item["positive_prompts"] = list(e.positive_prompts)
        if e.negative_prompts:
            item["negative_prompts"] = list(e.negative_prompts)
        experts.append(item)
    return {"base_model": resolved[0], "experts": experts,
            "gate_mode": merge.gate_mode, "dtype": merge.dtype,
            "experts_per_token": merge.experts_per_token, "architecture": "Mixtral"}


class _ErrorCollector(logging.Handler):
    """mergekit logs its reason and then calls sys.exit: keep the reason for our exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_mergekit(config: dict, out: Path, seed: int) -> None:
    from mergekit.merge import MergeOptions
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.scripts.moe import build

    try:
        moe_config = MoEMergeConfig.model_validate(config)
    except Exception as exc:
        raise MergeError(f"mergekit rejected the merge config: {exc}") from exc
    options = MergeOptions(random_seed=seed, device="cpu", copy_tokenizer=True, quiet=True)
    options.apply_global_options()  # seeds torch for the `random` gate mode
    collector = _ErrorCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        build(moe_config, out_path=str(out), merge_options=options, device="cpu")
    except SystemExit as exc:  # mergekit exits on a bad config instead of raising
        reason = "; ".join(collector.messages) or f"exit status {exc.code}"
        raise MergeError(f"mergekit refused the merge: {reason}") from None
    finally:
        root.removeHandler(collector)


def merge_experts(merge: MergeConfig, out: Path, seed: int = 0) -> Manifest:
    """Validate, merge, convert to vLLM's layout, hash, and move into `out` atomically."""
    out = Path(out)
    if out.exists():
        raise MergeError(f"{out} already exists; remove it or choose another output")
    base_cfg = check_compatible(merge)  # cheap: config.json files only
    refs = [merge.base_model, *merge.experts]
    resolved = [str(local_dir(r).resolve()) for r in refs]
    config = mergekit_config(merge, resolved)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
    try:
        fused = work / "fused"
        run_mergekit(config, fused, seed)
        align_pad_token(fused, Path(resolved[0]))
        manifest = build_manifest(merge, resolved, config, base_cfg)
        manifest.save(fused)
        (fused / MANIFEST_FILE).chmod(0o644)  # readable by a server running as another user
        # The one rewrite on the train -> register -> serve path (docs/format.md): mergekit's
        # fused output becomes the per-expert layout, which stock vLLM reads too. The
        # converter fills a temp sibling and renames it: `out` appears complete or not at all.
        convert_checkpoint(fused, out, "per_expert")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def align_pad_token(ckpt: Path, base: Path) -> None:
    """mergekit sets the merged tokenizer's pad token to BOS (and left padding) whatever the
    base model says, so config.json's pad_token_id and the tokenizer disagreed. Restore the
    base tokenizer's pad token and padding side, and write the same id into config.json."""
    from transformers import AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(ckpt)
    if base_tok.pad_token is not None:
        tok.pad_token = base_tok.pad_token
    tok.padding_side = base_tok.padding_side
    tok.save_pretrained(ckpt)
    config_path = ckpt / "config.json"
    config = json.loads(config_path.read_text())
    config["pad_token_id"] = tok.pad_token_id
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def build_manifest(merge: MergeConfig, resolved: list[str], config: dict,
                   base_cfg: dict) -> Manifest:
    experts = []
    for i, (spec, path) in enumerate(zip(merge.experts, resolved[1:], strict=True)):
        hashes = expert_hashes(Path(path), as_dtype=merge.dtype).get(0, {})
        if not hashes:
            raise MergeError(f"expert {i} ({spec.domain}) at {path}: no FFN tensors found")
        experts.append(ExpertRecord(index=i, domain=spec.domain, source=_source(spec, path),
                                    revision=spec.revision, sha256=hashes))
    return Manifest(
        project_version=project_version(),
        num_layers=int(base_cfg["num_hidden_layers"]),
        num_experts=len(merge.experts),
        top_k=merge.experts_per_token,
        dtype=merge.dtype,
        base_model=ModelSource(source=_source(merge.base_model, resolved[0]),
                               revision=merge.base_model.revision),
        experts=experts,
        merge=MergeRecord(gate_mode=merge.gate_mode, experts_per_token=merge.experts_per_token,
                          dtype=merge.dtype, mergekit_version=version("mergekit"),
                          config=config),
        freeze=FreezeSpec(method="none"),
    )


def _source(spec, resolved: str) -> str:
    """Hub ids are recorded as ids (with the revision beside them), local models as paths."""
    from .sources import is_local

    return resolved if is_local(spec) else spec.source
