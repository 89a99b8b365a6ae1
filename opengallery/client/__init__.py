"""The Python client of the opengallery service (HTTP only: needs httpx, nothing of service/).

    from opengallery.client import Client, OpenGalleryError

    with Client("http://127.0.0.1:8000", api_key) as client:
        client.create_gallery("staff", fpir=0.02)
        client.put_subject("staff", "José")
        client.enroll("staff", "José", images=["jose1.png", "jose2.png"])
        result = client.identify("staff", images=["probe.png"]).results[0]

`AsyncClient` has the same methods as coroutines. docs/service.md ("Python client") shows more.
"""

from opengallery.client._async import AsyncClient
from opengallery.client._base import BulkItem
from opengallery.client._sync import Client
from opengallery.client.errors import (
    CONNECTION_ERROR,
    HTTP_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    OpenGalleryError,
)
from opengallery.client.types import (
    BulkEnrolment,
    BulkOutcome,
    Calibration,
    CalibrationProbe,
    CalibrationSample,
    CalibrationSamplePage,
    CalibrationUpload,
    Candidate,
    CreatedKey,
    Enrolment,
    Gallery,
    GalleryCalibration,
    Health,
    Identification,
    IdentifyResult,
    Job,
    JobProgress,
    KeyInfo,
    ModelInfo,
    OperatingPoint,
    Readiness,
    Sample,
    SampleOutcome,
    Subject,
    SubjectPage,
    Verification,
)

__all__ = [
    "CONNECTION_ERROR",
    "HTTP_ERROR",
    "INVALID_RESPONSE",
    "TIMEOUT",
    "AsyncClient",
    "BulkEnrolment",
    "BulkItem",
    "BulkOutcome",
    "Calibration",
    "CalibrationProbe",
    "CalibrationSample",
    "CalibrationSamplePage",
    "CalibrationUpload",
    "Candidate",
    "Client",
    "CreatedKey",
    "Enrolment",
    "Gallery",
    "GalleryCalibration",
    "Health",
    "Identification",
    "IdentifyResult",
    "Job",
    "JobProgress",
    "KeyInfo",
    "ModelInfo",
    "OpenGalleryError",
    "OperatingPoint",
    "Readiness",
    "Sample",
    "SampleOutcome",
    "Subject",
    "SubjectPage",
    "Verification",
]
