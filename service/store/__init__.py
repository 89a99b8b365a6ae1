"""Storage behind a small interface (`Store`); SQLite by default."""

from service.store.base import (
    AddedSample,
    AlreadyExistsError,
    ApiKeyRecord,
    GalleryEmbeddings,
    GalleryRecord,
    JobRecord,
    NewSample,
    NotFoundError,
    SampleRecord,
    Store,
    StoreConflict,
    StoredImage,
    StoreError,
    SubjectRecord,
)
from service.store.sqlite import SQLiteStore

__all__ = [
    "AddedSample",
    "AlreadyExistsError",
    "ApiKeyRecord",
    "GalleryEmbeddings",
    "GalleryRecord",
    "JobRecord",
    "NewSample",
    "NotFoundError",
    "SQLiteStore",
    "SampleRecord",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoredImage",
    "SubjectRecord",
]
