"""Registered bundles on the server's disk, loaded into the service's `LoadedModels`.

`POST /v1/models {"path"}` copies a verified bundle into `DATA_DIR/models/<name@version>/`
(`models.registry.ModelRegistry`: checksum and schema verified, copied atomically), then loads
it. The copy is what the service keeps: it survives a restart and the removal of the source
directory. The default bundle (`--model`) is copied in at start too, so galleries bound to it
keep working when a later start names another default.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from models.bundle import BundleError
from models.registry import DuplicateModelError
from models.registry import ModelRegistry as BundleDirectory
from service.core.errors import ServiceError, StartupError
from service.core.models import DuplicateModel, LoadedModel, LoadedModels
from service.settings import Settings
from service.storage import Store

logger = logging.getLogger("opengallery.service")


def bundle_directory(settings: Settings) -> BundleDirectory:
    return BundleDirectory(settings.data_dir / "models")


def keep_default(directory: BundleDirectory, default: LoadedModel) -> None:
    """Copy the default bundle into the registry unless a bundle with its id is there.

    StartupError when the registered copy holds other weights: a model id names one set of
    weights forever, since galleries store embeddings by model id and the calibrated
    thresholds belong to those weights.
    """
    if default.model_id in directory:
        try:
            kept = directory.get(default.model_id)
        except BundleError as error:
            logger.error("registered copy of %s is broken: %s", default.model_id, error)
            return
        if kept.manifest.onnx_sha256 != default.bundle.manifest.onnx_sha256:
            raise StartupError(
                f"model {default.model_id} from {default.bundle.path} has other weights than "
                f"the registered {default.model_id} in {kept.path}: a model id names one set of "
                f"weights; give the new bundle a new version (manifest 'version')"
            )
        return
    try:
        directory.register(default.bundle.path)
    except DuplicateModelError:
        pass  # another process registered it meanwhile
    except OSError as error:  # a read-only data dir must not stop the service
        logger.warning("could not keep a copy of the default bundle: %s", error)


def load_registered(models: LoadedModels, directory: BundleDirectory, store: Store) -> None:
    """Load every registered bundle not loaded yet; a broken one is logged and skipped."""
    paths = [bundle.path for bundle in directory.list()]
    # Bundles registered by path before the on-disk registry existed.
    paths += [Path(path) for path in store.registered_models().values()]
    for path in paths:
        try:
            models.load(path)
        except DuplicateModel:
            continue
        except Exception as error:  # one broken bundle must not stop the service
            logger.error("registered model at %s cannot be loaded: %s", path, error)


def register_bundle(
    models: LoadedModels, directory: BundleDirectory, store: Store, path: str
) -> LoadedModel:
    """Verify, copy in and load a bundle; ServiceError invalid_bundle or already_exists.

    Nothing changes unless every step succeeds: a copy whose model onnxruntime refuses is
    removed again, and the models already loaded keep serving throughout.
    """
    source = Path(path)
    if not source.is_absolute():
        raise ServiceError("invalid_bundle", f"{path}: give an absolute path on the server's disk")
    try:
        bundle = directory.register(source)
    except BundleError as error:
        raise ServiceError("invalid_bundle", str(error)) from None
    except DuplicateModelError as error:
        # same_file tells a harmless repeat (push goes on) from a conflict (push stops).
        details = {"model": error.model_id, "same_file": error.same_file}
        raise ServiceError("already_exists", str(error), details=details) from None
    except OSError as error:
        raise ServiceError("invalid_bundle", f"{path}: {error.strerror or error}") from None
    try:
        model = models.load(bundle.path)
    except DuplicateModel:  # e.g. the default bundle, loaded from --model
        shutil.rmtree(bundle.path, ignore_errors=True)
        held = models.get(bundle.model_id)
        same = held is not None and held.bundle.manifest.onnx_sha256 == bundle.manifest.onnx_sha256
        detail = "the same model file" if same else "a different model file"
        raise ServiceError(
            "already_exists",
            f"model {bundle.model_id} is already loaded ({detail}); "
            f"give the new bundle another version",
            details={"model": bundle.model_id, "same_file": same},
        ) from None
    except Exception as error:  # onnxruntime's errors share no base class but Exception
        shutil.rmtree(bundle.path, ignore_errors=True)
        raise ServiceError(
            "invalid_bundle", f"{path}: the model cannot be loaded: {error}"
        ) from None
    # Recorded in the database too: other replicas load it from there (through the change
    # log) when the copy's path is theirs as well (one machine, or a shared volume).
    store.register_model(model.model_id, str(bundle.path))
    logger.info("registered model %s from %s", model.model_id, source)
    return model
