"""A directory of verified bundles, one per model id ``name@version``.

Layout: ``ROOT/<name>@<version>/{manifest.json, model.onnx, calibration.npz}``. Registering
verifies the source with :func:`~models.bundle.load_bundle`, copies its three files into a
staging directory under ``ROOT``, verifies the copy, and renames it into place: a crash or a
bad bundle leaves the registry as it was (at worst a ``ROOT/.staging-*`` directory, ignored
and removed by the next registry opened on ``ROOT`` once it is an hour old). Two processes
registering the same id race on the rename; exactly one wins, the other gets
:class:`DuplicateModelError`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from models.bundle import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    Bundle,
    BundleError,
    is_model_id,
    load_bundle,
    staging_directory,
)

log = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
_STALE_SECONDS = 3600.0


class DuplicateModelError(ValueError):
    """A bundle with this model id is already registered.

    `same_file` says whether the registered bundle holds the same ONNX file (a harmless
    repeat) or a different one (a conflict: the new bundle needs another version).
    """

    def __init__(self, message: str, *, model_id: str, same_file: bool) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.same_file = same_file


class ModelNotFoundError(LookupError):
    """No registered bundle has this model id."""


class ModelRegistry:
    """Bundles stored under ``root`` by model id."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._remove_stale_staging()

    def register(self, bundle_dir: str | os.PathLike[str]) -> Bundle:
        """Verify and copy a bundle in; returns the registered copy.

        BundleError if the source is not a valid bundle, DuplicateModelError if its id is
        taken; in both cases nothing changes.
        """
        source = load_bundle(bundle_dir)
        model_id = source.model_id
        target = self.root / model_id
        with self._lock:
            if target.exists():
                raise self._duplicate(source, target)
            staging = staging_directory(self.root, prefix=_STAGING_PREFIX)
            try:
                for name in (MANIFEST_FILE, ONNX_FILE, CALIBRATION_FILE):
                    shutil.copyfile(source.path / name, staging / name)
                    with open(staging / name, "rb") as handle:
                        os.fsync(handle.fileno())
                load_bundle(staging)  # the copy, not just the source, must verify
                try:
                    os.rename(staging, target)  # fails if another process got there first
                except OSError:
                    if target.exists():
                        raise self._duplicate(source, target) from None
                    raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        log.info("registered model %s from %s", model_id, source.path)
        return load_bundle(target)

    def get(self, model_id: str) -> Bundle:
        """The verified bundle of ``model_id``; ModelNotFoundError if there is none."""
        if not is_model_id(model_id):
            raise ModelNotFoundError(f"'{model_id}' is not a model id (expected name@version)")
        path = self.root / model_id
        if not path.is_dir():
            raise ModelNotFoundError(f"model {model_id} is not registered")
        return load_bundle(path)

    def list(self) -> list[Bundle]:
        """Every registered bundle that verifies, by model id; broken ones are logged, skipped."""
        bundles = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not path.is_dir() or not is_model_id(path.name):
                continue
            try:
                bundles.append(load_bundle(path))
            except BundleError as error:
                log.warning("skipping broken registered model %s: %s", path.name, error)
        return bundles

    def __contains__(self, model_id: object) -> bool:
        return (
            isinstance(model_id, str) and is_model_id(model_id) and (self.root / model_id).is_dir()
        )

    @staticmethod
    def _duplicate(source: Bundle, target: Path) -> DuplicateModelError:
        try:
            same = load_bundle(target).manifest.onnx_sha256 == source.manifest.onnx_sha256
        except BundleError:
            same = False
        detail = "the same model file" if same else "a different model file"
        return DuplicateModelError(
            f"model {source.model_id} is already registered ({detail}); "
            f"give the new bundle another version",
            model_id=source.model_id,
            same_file=same,
        )

    def _remove_stale_staging(self) -> None:
        now = time.time()
        for path in self.root.glob(f"{_STAGING_PREFIX}*"):
            try:
                if now - path.stat().st_mtime > _STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass  # another process removed it first
