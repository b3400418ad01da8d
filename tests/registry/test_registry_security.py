"""Names are one safe path segment and no registered REF resolves outside the registry root."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_registry.errors import InvalidNameError, NotFoundError, UnsafePathError
from model_registry.refs import parse_ref, validate_name
from model_registry.verify import verify

BAD_NAMES = ["../x", "..", ".hidden", "x/y", "x\\y", "Moe", "-moe", "_moe", "", "a" * 65,
             "moe\x00", "moe@1", "/abs", "moe name"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_anything_is_written(registry, kit, name):
    with pytest.raises(InvalidNameError, match="invalid model name"):
        registry.register(kit.bare, name)
    assert registry.list_models() == [] and list(registry.artifacts.keys()) == []


@pytest.mark.parametrize("alias", ["../prod", "Prod", "3", "v3", "latest", "a/b", ""])
def test_bad_aliases_are_refused(registry, kit, alias):
    with pytest.raises(InvalidNameError):
        registry.register(kit.bare, "moe", aliases=[alias])
    assert registry.list_models() == []
    registry.register(kit.bare, "moe")
    with pytest.raises(InvalidNameError):
        registry.set_alias("moe", 1, alias)


def test_good_names_parse():
    assert parse_ref("a" * 64).name == "a" * 64
    assert str(parse_ref("mofe-med_1.2@prod")) == "mofe-med_1.2@prod"
    assert parse_ref("m@v12").version == 12


@pytest.mark.parametrize("ref", ["moe@../../etc", "moe@1/../../x", "../../etc", "moe/../..",
                                 "moe@0"])
def test_traversal_refs_never_reach_outside(registry, kit, ref):
    registry.register(kit.bare, "moe")
    with pytest.raises((InvalidNameError, NotFoundError)):
        registry.resolve(ref)


def test_symlinked_artifact_dir_pointing_out_is_refused(registry, kit, tmp_path):
    registry.register(kit.bare, "moe", aliases=["prod"])
    art = registry.root / "artifacts" / "moe" / "v1"
    outside = tmp_path / "outside"
    shutil.copytree(art, outside)  # same bytes: only the location is wrong
    shutil.rmtree(art)
    art.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        registry.resolve("moe@prod")
    report = verify(registry, "moe@1")
    assert not report.ok and "symbolic link" in report.problems[0]
    registry.delete("moe@1", force=True)
    assert not art.is_symlink() and (outside / "model-own.safetensors").is_file()


def test_symlinked_model_dir_pointing_out_is_refused(registry, kit, tmp_path):
    registry.register(kit.bare, "moe")
    model_dir = registry.root / "artifacts" / "moe"
    shutil.move(model_dir, tmp_path / "moved")
    model_dir.symlink_to(tmp_path / "moved", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        registry.resolve("moe")


def test_tampered_artifact_key_is_refused(registry, backend, kit):
    registry.register(kit.bare, "moe")
    backend.execute("UPDATE versions SET artifact = '../../etc'")
    with pytest.raises(UnsafePathError, match="not of the form"):
        registry.resolve("moe")


def test_copy_stores_link_targets_not_links(registry, kit, copy_of, tmp_path):
    ckpt = copy_of(kit.bare)
    (tmp_path / "outside.txt").write_text("template")
    os.symlink(tmp_path / "outside.txt", ckpt / "chat_template.jinja")
    registry.register(ckpt, "moe")
    stored = registry.resolve("moe") / "chat_template.jinja"
    assert not stored.is_symlink() and stored.read_text() == "template"
    assert verify(registry, "moe").ok


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("az09._-/\\@ ~AZ\x00é"), max_size=70))
def test_every_accepted_name_is_one_safe_path_segment(tmp_path_factory, text):
    root = tmp_path_factory.getbasetemp() / "artifacts"
    try:
        validate_name(text)
    except InvalidNameError:
        return
    assert not set(text) & set("/\\@ ~\x00") and text[0] not in "._-"
    assert (root / text / "v1").resolve().parent.parent == root.resolve()
    assert str(parse_ref(f"{text}@7")) == f"{text}@7"
