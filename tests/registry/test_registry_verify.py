"""`verify` re-hashes everything: one flipped byte anywhere is a failure."""

from __future__ import annotations

import pytest
from registry_support import flip_byte

from model_registry.checkpoint import canonical_expert_tensors
from model_registry.verify import verify


def test_clean_version_verifies(registry, kit):
    registry.register(kit.fused, "moe")
    report = verify(registry, "moe")
    assert report.ok, report.problems
    assert report.files_checked == 3 + 3 + 4 * 2 * 3  # own files, 2 indices, expert shards
    assert report.tensors_checked == 4 * 2 * 3


def test_one_flipped_byte_in_any_file_is_detected(registry, kit):
    registry.register(kit.per_expert, "moe")
    path = registry.resolve("moe@1")
    for file in sorted(p for p in path.iterdir()):
        size = file.stat().st_size
        for offset in sorted({0, 9, size // 2, size - 1}):
            flip_byte(file, offset)
            report = verify(registry, "moe@1")
            assert not report.ok, (file.name, offset)
            assert any(p.startswith(f"{file.name}: sha256") for p in report.problems)
            flip_byte(file, offset)  # restore
    assert verify(registry, "moe@1").ok


def test_flipped_expert_byte_names_the_tensor(registry, kit):
    registry.register(kit.fused, "moe")
    path = registry.resolve("moe@1")
    [t] = [t for t in canonical_expert_tensors(path)
           if (t.layer, t.expert, t.proj) == (1, 2, "w3")]
    flip_byte(t.file, t.start + 5)
    report = verify(registry, "moe@1")
    assert "expert 2 tensor 1.w3: hash differs" in report.problems
    assert len([p for p in report.problems if p.startswith("expert")]) == 1
    # and the frozen claim, re-checked with registration's verdict, names the same tensor
    assert report.frozen_check == "failed" and report.exit_code == 1
    assert "expert(s) 2 differ" in report.frozen_summary


def test_missing_and_unrecorded_files(registry, kit):
    registry.register(kit.per_expert, "moe")
    path = registry.resolve("moe@1")
    (path / "tokenizer.json").unlink()
    (path / "notes.txt").write_text("added later")
    problems = verify(registry, "moe@1").problems
    assert "tokenizer.json: missing" in problems
    assert "notes.txt: file not recorded at registration" in problems


def test_linked_source_changed_after_registration(registry, kit, copy_of):
    ckpt = copy_of(kit.fused)
    registry.register(ckpt, "moe", mode="link")
    assert verify(registry, "moe").ok
    flip_byte(ckpt / "config.json", 3)
    assert not verify(registry, "moe").ok


@pytest.mark.parametrize("ref", ["moe@2", "moe@prod", "other"])
def test_verify_unknown_ref_raises(registry, kit, ref):
    registry.register(kit.bare, "moe")
    from model_registry.errors import NotFoundError
    with pytest.raises(NotFoundError):
        verify(registry, ref)


def test_linked_directory_gone(registry, kit, copy_of):
    import shutil

    ckpt = copy_of(kit.bare)
    registry.register(ckpt, "moe", mode="link")
    shutil.rmtree(ckpt)
    report = verify(registry, "moe")
    assert not report.ok and "no longer exists" in report.problems[0]
