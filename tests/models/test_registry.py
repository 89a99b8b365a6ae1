import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from models.bundle import BundleError, is_model_id
from models.registry import DuplicateModelError, ModelNotFoundError, ModelRegistry
from models.testing import make_random_bundle


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    for version, seed in (("1", 0), ("2", 1)):
        make_random_bundle(
            tmp_path / "src" / version, seed=seed, version=version, calibration_size=8
        )
    return tmp_path / "src"


def test_register_get_list(tmp_path: Path, sources: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    first = registry.register(sources / "2")
    second = registry.register(sources / "1")
    assert first.path == (tmp_path / "models" / "random@2").resolve()
    assert tree(first.path) == tree(sources / "2")
    assert registry.get("random@1").manifest == second.manifest
    assert [b.model_id for b in registry.list()] == ["random@1", "random@2"]
    assert "random@1" in registry and "random@3" not in registry
    # the registry keeps its own copy: the source can go away
    for path in (sources / "1").iterdir():
        path.unlink()
    assert registry.get("random@1").manifest == second.manifest


def test_duplicate_is_refused_and_changes_nothing(tmp_path: Path, sources: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.register(sources / "1")
    before = tree(tmp_path / "models")
    with pytest.raises(
        DuplicateModelError, match=r"random@1 is already registered \(the same"
    ) as same:
        registry.register(sources / "1")
    assert (same.value.model_id, same.value.same_file) == ("random@1", True)
    other = make_random_bundle(tmp_path / "other", seed=9, version="1", calibration_size=8)
    with pytest.raises(DuplicateModelError, match="a different model file") as different:
        registry.register(other.path)
    assert (different.value.model_id, different.value.same_file) == ("random@1", False)
    assert tree(tmp_path / "models") == before


def test_corrupt_bundle_is_refused_and_changes_nothing(tmp_path: Path, sources: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.register(sources / "1")
    before = tree(tmp_path / "models")
    (sources / "2" / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(BundleError, match="sha256"):
        registry.register(sources / "2")
    with pytest.raises(BundleError, match="does not exist"):
        registry.register(tmp_path / "missing")
    assert tree(tmp_path / "models") == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["random@1"]


def test_failure_while_copying_leaves_nothing(
    tmp_path: Path, sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(tmp_path / "models")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        registry.register(sources / "1")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("model_id", ["random@9", "random", "../src/1", "random@1/..", ""])
def test_get_unknown(tmp_path: Path, model_id: str) -> None:
    with pytest.raises(ModelNotFoundError):
        ModelRegistry(tmp_path / "models").get(model_id)


def test_is_model_id() -> None:
    assert is_model_id("mnist-mel@2026.11.23+1")
    for bad in ("a", "a@", "@1", "a@b@c", "a/b@1", "..@1", "a@.."):
        assert not is_model_id(bad)


def test_broken_entry_is_skipped_by_list_and_refused_by_get(
    tmp_path: Path, sources: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.register(sources / "1")
    registry.register(sources / "2")
    manifest = tmp_path / "models" / "random@2" / "manifest.json"
    manifest.write_text(json.dumps({"name": "random"}))
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        assert [b.model_id for b in registry.list()] == ["random@1"]
    assert "random@2" in caplog.text
    with pytest.raises(BundleError, match="missing field"):
        registry.get("random@2")


def test_concurrent_registration_has_one_winner(tmp_path: Path, sources: Path) -> None:
    root = tmp_path / "models"
    registries = [ModelRegistry(root) for _ in range(4)]  # as if from separate processes
    outcomes: list[str] = []
    barrier = threading.Barrier(len(registries))

    def register(registry: ModelRegistry) -> None:
        barrier.wait()
        try:
            registry.register(sources / "1")
            outcomes.append("ok")
        except DuplicateModelError:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=register, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 3 + ["ok"]
    assert [p.name for p in root.iterdir()] == ["random@1"]
    assert tree(root / "random@1") == tree(sources / "1")


def test_stale_staging_is_cleaned_fresh_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / ".staging-old").mkdir(parents=True)
    (root / ".staging-new").mkdir()
    old = time.time() - 7200
    os.utime(root / ".staging-old", (old, old))
    registry = ModelRegistry(root)
    assert sorted(p.name for p in root.iterdir()) == [".staging-new"]
    assert registry.list() == []
