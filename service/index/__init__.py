"""The vector index wing: subject-level search behind one protocol, a backend per URL.

`open_index(url)` reads OPENGALLERY_INDEX_URL: `faiss://` (the default) is exact search in
process memory. A new backend implements `SubjectSearch` and `IndexBackend` (base.py) and
gets a scheme here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from service.index.base import (
    Candidate,
    IndexBackend,
    IndexConfigError,
    IndexContents,
    SubjectSearch,
)

DEFAULT_INDEX_URL = "faiss://"


def open_index(url: str | None, *, search_threads: int = 1) -> IndexBackend:
    """The backend named by `url` (None: the default); IndexConfigError otherwise."""
    scheme = urlsplit(url or DEFAULT_INDEX_URL).scheme
    if scheme == "faiss":
        from service.index.faiss import FaissBackend

        return FaissBackend(search_threads)
    if scheme == "milvus":
        raise IndexConfigError("milvus:// indexes are not supported by this build; use faiss://")
    raise IndexConfigError(
        f"index URL scheme {scheme or '(none)'!r} is not supported; use faiss://"
    )


__all__ = [
    "DEFAULT_INDEX_URL",
    "Candidate",
    "IndexBackend",
    "IndexConfigError",
    "IndexContents",
    "SubjectSearch",
    "open_index",
]
