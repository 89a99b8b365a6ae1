"""Storage behind a small interface (`Store`); SQLite by default."""

from service.store.base import (
    AddedSample,
    AlreadyExistsError,
    ApiKeyRecord,
    GalleryEmbeddings,
    GalleryRecord,
    NewSample,
    NotFoundError,
    SampleRecord,
    Store,
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
    "NewSample",
    "NotFoundError",
    "SQLiteStore",
    "SampleRecord",
    "Store",
    "StoreError",
    "SubjectRecord",
]
