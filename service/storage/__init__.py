"""Durable state of the service behind small interfaces, one backend per database.

`open_store(url)` opens a store; `Store` is its whole interface, made of `GalleryStore`,
`KeyStore`, `CalibrationStore`, `ModelStore`, `JobStore`, `TransferStore` and `ChangeStore` (the
change log that replicas follow). Records are frozen dataclasses; errors derive from
`StoreError` and carry no HTTP status.
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
    ChangeStore,
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
    ChangeRecord,
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
    "ChangeRecord",
    "ChangeStore",
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
