"""The model bundle shared by training and the service (numpy + Pillow only, no torch).

``models.testing`` (random bundles for tests) needs ``onnx`` and is not imported here.
"""

from models.bundle import (
    Bundle,
    BundleError,
    InputSpec,
    Manifest,
    file_sha256,
    is_model_id,
    load_bundle,
    write_bundle,
)
from models.calibration import (
    CalibrationError,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)
from models.preprocessing import image_to_pixels, images_to_array, pixels_to_array
from models.registry import DuplicateModelError, ModelNotFoundError, ModelRegistry

__all__ = [
    "Bundle",
    "BundleError",
    "CalibrationError",
    "DuplicateModelError",
    "InputSpec",
    "Manifest",
    "ModelNotFoundError",
    "ModelRegistry",
    "file_sha256",
    "image_to_pixels",
    "images_to_array",
    "is_model_id",
    "load_bundle",
    "min_searches_for_fpir",
    "pixels_to_array",
    "realised_fpir",
    "threshold_for_fpir",
    "write_bundle",
]
