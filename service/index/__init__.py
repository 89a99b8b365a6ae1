"""The vector index wing: subject-level search behind one protocol, a backend per URL.

`open_index(url)` reads OPENGALLERY_INDEX_URL:

- `faiss://` (the default): exact search over float32 vectors in process memory;
- `faiss://?storage=sq8`: exact search over 8-bit codes in process memory, re-ranked from the
  float32 vectors kept in a file under the data directory (a quarter of the memory);
  concurrent searches share one scan of the codes (`slots=<n>` scans at once, one by default,
  each split between cores / n threads; `merge=0` turns sharing off; with `ivf=`, `merge=1`
  merges into FAISS searches, one per core by default);
- `faiss://?storage=sq8&ivf=<lists>&nprobe=<n>`: approximate search (an inverted file of
  `lists` lists, `n` visited per query), re-ranked exactly within what it visits.

- `milvus://host:port`: each gallery's index in a Milvus server (the `scale` extra; options
  in service/index/milvus.py).

A new backend implements `SubjectSearch` and `IndexBackend` (base.py) and gets a scheme here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from service.index.base import (
    Candidate,
    IndexBackend,
    IndexConfigError,
    IndexContents,
    IndexUnavailable,
    Snapshot,
    SnapshotBackend,
    SubjectSearch,
)

DEFAULT_INDEX_URL = "faiss://"
STORAGES = ("float32", "sq8")
_FAISS_OPTIONS = {"storage", "ivf", "nprobe", "merge", "slots"}


def _positive_int(options: dict[str, str], name: str, default: int) -> int:
    text = options.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise IndexConfigError(f"index URL option {name} must be a positive integer, got {text!r}")
    return int(text)


def open_index(
    url: str | None, *, search_threads: int = 1, index_dir: Path | None = None
) -> IndexBackend:
    """The backend named by `url` (None: the default). IndexConfigError for a URL this build
    cannot serve; IndexUnavailable if its server cannot be reached.

    `index_dir` is where `storage=sq8` keeps its float32 vector files and snapshots
    (`<data_dir>/index` for one server; the system's temporary directory when None)."""
    parts = urlsplit(url or DEFAULT_INDEX_URL)
    scheme = parts.scheme
    if scheme == "faiss":
        from service.index.faiss import FaissBackend, set_search_threads

        options: dict[str, str] = {}
        for name, values in parse_qs(parts.query, keep_blank_values=True).items():
            if name not in _FAISS_OPTIONS:
                raise IndexConfigError(
                    f"unknown faiss:// index option {name!r}; known: {sorted(_FAISS_OPTIONS)}"
                )
            options[name] = values[-1]
        storage = options.get("storage", "float32")
        if storage not in STORAGES:
            raise IndexConfigError(
                f"faiss:// storage must be one of {list(STORAGES)}, got {storage!r}"
            )
        if storage == "float32":
            if options.keys() & {"ivf", "nprobe", "merge", "slots"}:
                raise IndexConfigError("faiss:// ivf, nprobe, merge and slots need storage=sq8")
            return FaissBackend(search_threads)
        from service.index.quantized import QuantizedBackend

        set_search_threads(search_threads)
        ivf_lists = _positive_int(options, "ivf", 0)
        # Merged searches share one scan of the codes (int8_scan): on by default for the flat
        # codes, where a merged scan costs less per query and a lone search waits for nothing.
        merge = options.get("merge", "0" if ivf_lists else "1")
        if merge not in ("0", "1"):
            raise IndexConfigError(f"faiss:// merge must be 0 or 1, got {merge!r}")
        return QuantizedBackend(
            index_dir,
            ivf_lists=ivf_lists,
            nprobe=_positive_int(options, "nprobe", 16),
            merge_searches=merge == "1",
            search_slots=_positive_int(options, "slots", 0) or None,
        )
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
    "Snapshot",
    "SnapshotBackend",
    "SubjectSearch",
    "open_index",
]
