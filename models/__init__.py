"""The model bundle shared by training and the service (numpy + Pillow only, no torch).

``models.testing`` (random bundles for tests) needs ``onnx`` and is not imported here.
"""

from models.bundle import (
    Bundle,
    BundleError,
    InputSpec,
    Manifest,
    file_sha256,
    load_bundle,
    write_bundle,
)
from models.calibration import (
    CalibrationError,
    min_searches_for_fpir,
    realised_fpir,
    threshold_for_fpir,
)
from models.preprocessing import images_to_array, pixels_to_array

__all__ = [
    "Bundle",
    "BundleError",
    "CalibrationError",
    "InputSpec",
    "Manifest",
    "file_sha256",
    "images_to_array",
    "load_bundle",
    "min_searches_for_fpir",
    "pixels_to_array",
    "realised_fpir",
    "threshold_for_fpir",
    "write_bundle",
]
