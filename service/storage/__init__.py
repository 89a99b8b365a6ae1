"""Durable state of the service behind small interfaces, one backend per database.

`open_store(url)` opens a store; `Store` is its whole interface, made of `GalleryStore`,
`KeyStore`, `CalibrationStore`, `ModelStore` and `JobStore`. Records are frozen dataclasses;
errors derive from `StoreError` and carry no HTTP status.
"""

from service.storage.errors import (
    AlreadyExistsError,
    LastAdminKeyError,
    NotFoundError,
    SchemaVersionError,
    StoreConfigError,
    StoreConflict,
    StoreError,
    StoreFullError,
    StoreOpenError,
    StoreUnavailable,
)
from service.storage.factory import check_database_url, open_store, redact_url
from service.storage.protocols import (
    CalibrationStore,
    GalleryStore,
    JobStore,
    KeyStore,
    ModelStore,
    Store,
    TransferStore,
)
from service.storage.records import (
    AddedSample,
    ApiKeyRecord,
    BulkAdded,
    BulkEnrolled,
    CalibrationEmbeddings,
    CalibrationSampleRecord,
    ExportedProbe,
    ExportedSample,
    GalleryEmbeddings,
    GalleryRecord,
    JobRecord,
    NewSample,
    SampleRecord,
    StoredImage,
    SubjectRecord,
)

__all__ = [
    "AddedSample",
    "AlreadyExistsError",
    "ApiKeyRecord",
    "BulkAdded",
    "BulkEnrolled",
    "CalibrationEmbeddings",
    "CalibrationSampleRecord",
    "CalibrationStore",
    "ExportedProbe",
    "ExportedSample",
    "GalleryEmbeddings",
    "GalleryRecord",
    "GalleryStore",
    "JobRecord",
    "JobStore",
    "KeyStore",
    "LastAdminKeyError",
    "ModelStore",
    "NewSample",
    "NotFoundError",
    "SampleRecord",
    "SchemaVersionError",
    "Store",
    "StoreConfigError",
    "StoreConflict",
    "StoreError",
    "StoreFullError",
    "StoreOpenError",
    "StoreUnavailable",
    "StoredImage",
    "SubjectRecord",
    "TransferStore",
    "check_database_url",
    "open_store",
    "redact_url",
]
