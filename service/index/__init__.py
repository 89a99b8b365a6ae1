"""The vector index wing: subject-level search behind one protocol, a backend per URL.

`open_index(url)` reads OPENGALLERY_INDEX_URL: `faiss://` (the default) is exact search in
process memory; `milvus://host:port` keeps each gallery's index in a Milvus server (the
`scale` extra; see service/index/milvus.py for its options). A new backend implements
`SubjectSearch` and `IndexBackend` (base.py) and gets a scheme here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from service.index.base import (
    Candidate,
    IndexBackend,
    IndexConfigError,
    IndexContents,
    IndexUnavailable,
    SubjectSearch,
)

DEFAULT_INDEX_URL = "faiss://"


def open_index(url: str | None, *, search_threads: int = 1) -> IndexBackend:
    """The backend named by `url` (None: the default). IndexConfigError for a URL this build
    cannot serve; IndexUnavailable if its server cannot be reached."""
    scheme = urlsplit(url or DEFAULT_INDEX_URL).scheme
    if scheme == "faiss":
        from service.index.faiss import FaissBackend

        return FaissBackend(search_threads)
    if scheme == "milvus":
        try:
            from service.index.milvus import MilvusBackend
        except ImportError:
            raise IndexConfigError(
                "milvus:// indexes need pymilvus: install opengallery's 'scale' extra"
            ) from None
        return MilvusBackend(url or "")
    raise IndexConfigError(
        f"index URL scheme {scheme or '(none)'!r} is not supported; use faiss:// or "
        "milvus://host:port"
    )


__all__ = [
    "DEFAULT_INDEX_URL",
    "Candidate",
    "IndexBackend",
    "IndexConfigError",
    "IndexContents",
    "IndexUnavailable",
    "SubjectSearch",
    "open_index",
]
