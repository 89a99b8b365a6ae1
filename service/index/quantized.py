"""Exact search over 8-bit templates: `faiss://?storage=sq8`.

The index holds every searched vector (a sample under "max", a subject's template under "mean")
as 8-bit codes in process memory (FAISS `QT_8bit`: per dimension, 256 levels between the
trained minimum and maximum), about a quarter of float32, scanned by an integer matrix product
that every query of a search shares (int8_scan.py; its rounding of the query is part of the
error bound below). The float32 vectors live in a file
under the data directory, read with `pread` for the few candidates of each query, so they
cost page cache, not process memory.

Why the answers equal exact float32 search. Let `x^` be the decoded code of `x` and
`err = max ||x - x^||` over the encoded vectors (measured when encoding). For a probe `q`,
`|q.x - q.x^| <= ||q|| err` (Cauchy-Schwarz); FAISS's float32 approximate score and the exact
float32 score each add at most about `D u ||q|| (1 + err)` of rounding (u = 2^-24; err < 1),
so every approximate score is within `bound = ||q|| (err + 4 D u)` (plus the shared scan's
query rounding, `Int8Codes.query_error`) of the exact one. A subject's
approximate score is its best sample's, and the k-th best subject's approximate score `a_k`
gives `k` subjects whose exact scores are at least `a_k - bound`. A sample with approximate
score below `a_k - 2 bound` scores exactly below `a_k - bound`, so it can neither be in the top
k nor be the best sample of a subject that is. Re-ranking every sample at or above
`a_k - 2 bound` exactly therefore gives the exact top-k subjects and their exact scores
(per-subject max over the candidates; "mean" templates are one row per subject).
Identify narrows that window to half: it first scores exactly the rows down to the k-th
subject's best (k subjects whose exact scores reach some `e_k`, with `e_k <= a_k + bound`),
and a row below `e_k - bound` scores exactly below `e_k`; on 512-d galleries of 100k that
re-ranks about 25 rows per query instead of about 110. (Calibration's `top1_scores` keeps the
wider window: the same exact scores, vectorised over thousands of probes.) The FAISS
search asks for `_FIRST_K` rows and is widened while its last row still reaches the window
(from the same scan's scores: the codes are read once).

With `ivf=<lists>` the codes sit in an inverted file (`IndexIVFScalarQuantizer`) and a search
visits `nprobe` lists: approximate search, re-ranked exactly within what was visited.
Calibration (`top1_scores`) goes through the same search as identify.

Removed vectors are marked dead and dropped when the index is rebuilt: when a quarter of the
rows are dead, or when the gallery has doubled since the quantiser was trained (so that its
ranges, and the error bound, follow the data).

Concurrent searches can be merged (`merge_searches`): up to `search_slots` searches run at
once (one by default; with `ivf=`, one per core), a caller that finds them all busy queues its
probes, and the next search takes everything queued in one scan (no waiting window: a lone
caller searches at once). A merged scan of the codes is split between the cores (cores / slots
threads each): one scan at a time on every core gathers more queries per pass over the codes
than one scan per core, and a pass for few queries is bound by memory, not arithmetic. With a
directory, the backend saves snapshots (codes, row tables, names; the float32 row files stay
where they are) keyed by gallery, model and database version, which the next start loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import faiss
import numpy as np

from models.scoring import check_scoring, l2_normalise
from service.index.base import Candidate, IndexContents, Snapshot
from service.index.faiss import _apply_search_threads
from service.index.int8_scan import Int8Codes
from service.index.locks import RWLock

logger = logging.getLogger("opengallery.service")

_UNIT_ROUNDOFF = 2.0**-24
_TRAIN_ROWS = 65_536
_CHUNK_ROWS = 65_536
_MIN_REBUILD_ROWS = 256
# Rows asked of the first search: enough, on 512-d galleries of a million, for the window of
# twice the error bound below the k-th subject, so that one scan of the codes usually does.
_FIRST_K = 256
# Queries per shared scan of the codes: the integer product repacks each block per call, and
# from about 64 queries on that cost is spread thin (its int32 scores: 256 MB at 1M rows).
_SCAN_QUERIES = 64
SNAPSHOT_FORMAT = 2
_ATTACHED = "attached_"  # the prefix of the caller's arrays in a snapshot's .npz


def _close_and_remove(file: IO[bytes], path: Path | None, keep: dict[str, bool]) -> None:
    file.close()
    if path is not None and not keep["keep"]:
        path.unlink(missing_ok=True)


class RowFile:
    """float32 rows appended to a file; read back by row number.

    Under `directory` the file is named (`rows-<random>.f32`), so that a snapshot can refer to
    it, and removed when the RowFile is closed or collected unless a snapshot keeps it; with
    no directory it is an unlinked temporary file. `path` reopens a snapshot's file, cut to
    its first `rows` rows (anything after them was appended after the snapshot was taken)."""

    def __init__(
        self,
        dim: int,
        directory: Path | None = None,
        *,
        path: Path | None = None,
        rows: int = 0,
    ) -> None:
        self.dim = dim
        self._row_bytes = 4 * dim
        self.path = path
        if path is not None:
            self._file: IO[bytes] = open(path, "r+b")  # noqa: SIM115 (lives with the index)
            self._file.truncate(rows * self._row_bytes)
        elif directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / f"rows-{uuid.uuid4().hex}.f32"
            self._file = open(self.path, "x+b")  # noqa: SIM115 (lives with the index)
        else:
            self._file = tempfile.TemporaryFile(prefix="opengallery-vectors-")  # noqa: SIM115
        self._fd = self._file.fileno()
        self.rows = rows
        self._keep = {"keep": False}
        self._finalizer = weakref.finalize(
            self, _close_and_remove, self._file, self.path, self._keep
        )

    def keep(self, keep: bool = True) -> None:
        """Whether the file outlives this object (a snapshot refers to it)."""
        self._keep["keep"] = keep

    def sync(self) -> None:
        os.fsync(self._fd)

    def append(self, vectors: np.ndarray) -> int:
        """Write rows at the end; returns the first new row's number."""
        data = memoryview(np.ascontiguousarray(vectors, dtype=np.float32)).cast("B")
        first = self.rows
        offset, written = first * self._row_bytes, 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], offset + written)
        self.rows += len(vectors)
        return first

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of `rows` (any order), float32 [len(rows), dim]."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(rows.tolist()):
            self._read_into(out[i], row)
        return out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        self._read_into(out, start)
        return out

    def _read_into(self, out: np.ndarray, row: int) -> None:
        view = memoryview(out).cast("B")
        offset, done = row * self._row_bytes, 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], offset + done)
            if count <= 0:
                raise OSError(f"short read of the vector file at row {row}")
            done += count

    def close(self) -> None:
        self._finalizer()


class Column:
    """A growable 1-D numpy array (amortised appends)."""

    def __init__(self, dtype: type | np.dtype) -> None:
        self._data = np.zeros(16, dtype=dtype)
        self._size = 0

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def append(self, values: np.ndarray | list) -> None:
        values = np.asarray(values, dtype=self._data.dtype)
        need = self._size + len(values)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : need] = values
        self._size = need

    def replace(self, values: np.ndarray) -> None:
        self._data = np.array(values, dtype=self._data.dtype)
        self._size = len(values)

    def __len__(self) -> int:
        return self._size


class SubjectNames:
    """pk <-> subject id for millions of subjects without a Python object per subject.

    The bulk sits in arrays (sorted pks, UTF-8 names in one blob with offsets, name hashes
    sorted for lookup by name); changes since go to small dictionaries on top and are folded
    into the arrays when they grow past an eighth of them.
    """

    def __init__(self, subjects: dict[int, str]) -> None:
        self._fold(subjects)

    def _fold(self, subjects: dict[int, str]) -> None:
        pks = np.fromiter(subjects.keys(), dtype=np.int64, count=len(subjects))
        order = np.argsort(pks, kind="stable")
        self._pks = pks[order]
        names = list(subjects.values())
        encoded = [names[i].encode() for i in order.tolist()]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=self._offsets[1:])
        self._blob = b"".join(encoded)
        self._index_hashes()

    def _index_hashes(self, by_hash: np.ndarray | None = None) -> None:
        """The name hashes in sorted order (`by_hash`, when given, is that order, saved by a
        snapshot: the hash is deterministic) and the overlay, empty."""
        blob, offsets = self._blob, self._offsets.tolist()
        hashes = np.fromiter(
            (zlib.crc32(blob[offsets[i] : offsets[i + 1]]) for i in range(len(self._pks))),
            dtype=np.uint32,
            count=len(self._pks),
        )
        if by_hash is None:
            by_hash = np.argsort(hashes, kind="stable")
        # 32-bit positions and hashes: 8 bytes per subject instead of 16.
        self._by_hash = by_hash.astype(np.int32 if len(by_hash) < 2**31 else np.int64)
        self._hashes = hashes[by_hash]
        self._added: dict[int, str] = {}
        self._added_pks: dict[str, int] = {}
        self._hidden: set[int] = set()  # base pks removed or renamed since the fold

    def __len__(self) -> int:
        return len(self._pks) - len(self._hidden) + len(self._added)

    def _base_position(self, pk: int) -> int | None:
        position = int(np.searchsorted(self._pks, pk))
        if position < len(self._pks) and self._pks[position] == pk:
            return position
        return None

    def _base_name(self, position: int) -> str:
        start, stop = self._offsets[position], self._offsets[position + 1]
        return self._blob[start:stop].decode()

    def name(self, pk: int) -> str | None:
        if pk in self._added:
            return self._added[pk]
        if pk in self._hidden:
            return None
        position = self._base_position(pk)
        return None if position is None else self._base_name(position)

    def pk(self, name: str) -> int | None:
        if name in self._added_pks:
            return self._added_pks[name]
        key = zlib.crc32(name.encode())
        lo = int(np.searchsorted(self._hashes, np.uint32(key), "left"))
        hi = int(np.searchsorted(self._hashes, np.uint32(key), "right"))
        for position in self._by_hash[lo:hi].tolist():
            pk = int(self._pks[position])
            if pk not in self._hidden and self._base_name(position) == name:
                return pk
        return None

    def set(self, pk: int, name: str) -> None:
        current = self.name(pk)
        if current == name:
            return
        self._forget(pk)
        self._added[pk] = name
        self._added_pks[name] = pk
        self._maybe_fold()

    def remove(self, pk: int) -> None:
        self._forget(pk)
        self._maybe_fold()

    def _forget(self, pk: int) -> None:
        if pk in self._added:
            del self._added_pks[self._added.pop(pk)]
        if self._base_position(pk) is not None:
            self._hidden.add(pk)

    def _maybe_fold(self) -> None:
        if len(self._added) + len(self._hidden) > max(1024, len(self._pks) // 8):
            self._fold(dict(self.items()))

    def items(self) -> Iterator[tuple[int, str]]:
        for position, pk in enumerate(self._pks.tolist()):
            if pk not in self._hidden:
                yield pk, self._base_name(position)
        yield from self._added.items()


def _dot_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise float32 dot products: the one way both search and top1_scores compute an exact
    score, so that a probe and the calibration set are scored alike to the last bit."""
    return np.einsum("ij,ij->i", left, right)


def _reading(rows: RowFile, alive: np.ndarray) -> Iterator[np.ndarray]:
    """The live rows of `rows`, in order, a chunk at a time."""
    for start in range(0, len(alive), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(alive))
        keep = alive[start:stop]
        if keep.any():
            yield rows.read_range(start, stop)[keep]


@dataclass(eq=False)
class _PendingSearch:
    queries: np.ndarray
    top_k: int
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to run the next batch, not with a result
    result: list[list[Candidate]] | None = None
    error: BaseException | None = None


class QuantizedSubjectIndex:
    """One gallery's index for one model: 8-bit codes in memory, exact re-ranking from the
    float32 vectors on disk (implements SubjectSearch)."""

    def __init__(
        self,
        dim: int,
        scoring: str,
        *,
        directory: Path | None = None,
        ivf_lists: int = 0,
        nprobe: int = 16,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.scoring = check_scoring(scoring)
        self.ivf_lists = ivf_lists
        self.nprobe = nprobe
        self._directory = directory
        self._lock = RWLock()
        self._version = 0
        # Concurrent searches merged into one FAISS call (see search()).
        self.merge_searches = False
        self.searches = 0  # FAISS searches made for search() (merged ones count once)
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingSearch] = []
        self._running = 0  # merged searches running now
        # The shared integer scan splits itself between the cores; FAISS's inverted file
        # searches one merged batch per core.
        self.search_slots = max(1, os.cpu_count() or 1) if ivf_lists else 1
        self._names = SubjectNames({})
        # Searched rows: samples ("max") or subject templates ("mean"). Row r of the file is
        # row r of the columns and label r in the FAISS index.
        self._rows = RowFile(dim, directory)
        self._row_subject = Column(np.int64)
        self._row_sample = Column(np.int64)
        self._row_alive = Column(np.bool_)
        self._live_rows = 0
        # "mean" only: the samples behind the templates.
        self._samples = RowFile(dim, directory) if scoring == "mean" else None
        self._sample_id = Column(np.int64)
        self._sample_subject = Column(np.int64)
        self._sample_alive = Column(np.bool_)
        self._live_samples = 0
        self._max_sample_id = -1
        self._codes: faiss.Index | Int8Codes = self._new_codes(-np.ones(dim), np.ones(dim), None)
        self._error = 0.0  # max ||x - decode(encode(x))|| over the rows encoded
        self._trained_rows = 0
        self._snapshot: Path | None = None  # the snapshot whose files this index appends to

    # -- the codes --
    def _new_codes(
        self, low: np.ndarray, high: np.ndarray, sample: np.ndarray | None
    ) -> faiss.Index | Int8Codes:
        """Empty codes whose quantiser spans [low, high] in each dimension (an IVF's lists are
        trained on `sample`); `self._sq` becomes their encoder."""
        qtype = faiss.ScalarQuantizer.QT_8bit
        _apply_search_threads()
        trained = np.concatenate([low, high - low]).astype(np.float32)
        if not self.ivf_lists:
            self._sq = faiss.ScalarQuantizer(self.dim, qtype)
            faiss.copy_array_to_vector(trained, self._sq.trained)
            return Int8Codes(self.dim, low, high - low)
        ranges = np.stack([low, high]).astype(np.float32)
        sample = ranges if sample is None else sample
        lists = max(1, min(self.ivf_lists, len(sample) // 8))
        coarse = faiss.IndexFlatIP(self.dim)
        codes = faiss.IndexIVFScalarQuantizer(
            coarse, self.dim, lists, qtype, faiss.METRIC_INNER_PRODUCT, False
        )
        codes.cp.niter = 10
        codes.cp.min_points_per_centroid = 1  # a small gallery gets few lists, not a warning
        codes.nprobe = min(self.nprobe, lists)
        self._coarse = coarse  # the IVF index does not own it
        codes.train(np.ascontiguousarray(sample, dtype=np.float32))
        faiss.copy_array_to_vector(trained, codes.sq.trained)
        self._sq = codes.sq
        return codes

    def _encode(self, vectors: np.ndarray, first_row: int) -> None:
        """Add rows `first_row...` to the codes and widen the error bound to cover them."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not len(vectors):
            return
        sq = self._sq
        codes = sq.compute_codes(vectors)
        residual = np.linalg.norm(vectors - sq.decode(codes), axis=1)
        # float32 norms: relative rounding far below the margin.
        self._error = max(self._error, float(residual.max()) * (1 + 1e-4))
        if self.ivf_lists:
            labels = np.arange(first_row, first_row + len(vectors), dtype=np.int64)
            self._codes.add_with_ids(vectors, labels)
        else:
            assert self._codes.ntotal == first_row
            self._codes.add_codes(codes)

    def error_bound(self, queries: np.ndarray) -> np.ndarray:
        """Per query, the most its approximate score can differ from the exact one (with the
        shared scan, plus what rounding the query to integers costs: int8_scan)."""
        norms = np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1)
        bound = norms * (self._error + 4 * self.dim * _UNIT_ROUNDOFF)
        if isinstance(self._codes, Int8Codes):
            bound = bound + self._codes.query_error(queries)
        return bound

    def _rebuild(self, vectors: np.ndarray | None = None) -> None:
        """Re-train the quantiser on the live rows and re-encode them, dead rows dropped.
        `vectors`, when given, are the live rows in order (already in memory)."""

        old_rows, alive = self._rows, self._row_alive.values

        def chunks() -> Iterator[np.ndarray]:
            if vectors is None:
                yield from _reading(old_rows, alive)
            else:
                for start in range(0, len(vectors), _CHUNK_ROWS):
                    yield vectors[start : start + _CHUNK_ROWS]

        live = np.flatnonzero(alive)
        low, high = np.full(self.dim, np.inf), np.full(self.dim, -np.inf)
        for chunk in chunks():
            low, high = np.minimum(low, chunk.min(axis=0)), np.maximum(high, chunk.max(axis=0))
        if not len(live):
            low, high = -np.ones(self.dim), np.ones(self.dim)
        sample = None
        if self.ivf_lists and len(live):
            rng = np.random.default_rng(len(live))
            picked = np.sort(rng.choice(len(live), size=min(len(live), _TRAIN_ROWS), replace=False))
            sample = vectors[picked] if vectors is not None else self._rows.read(live[picked])
        codes = self._new_codes(low, high, sample)
        self._forget_snapshot()  # its row file is about to go
        rows = RowFile(self.dim, self._directory)
        self._rows, self._codes, self._error = rows, codes, 0.0
        for chunk in chunks():
            self._encode(chunk, rows.append(chunk))
        old_rows.close()
        self._row_subject.replace(self._row_subject.values[live])
        self._row_sample.replace(self._row_sample.values[live])
        self._row_alive.replace(np.ones(len(live), dtype=bool))
        self._trained_rows = len(live)

    def _maybe_rebuild(self) -> None:
        rows = len(self._row_alive)
        dead = rows - self._live_rows
        grown = self._live_rows >= max(_MIN_REBUILD_ROWS, 2 * self._trained_rows)
        if grown or dead > max(_MIN_REBUILD_ROWS, rows // 4):
            self._rebuild()

    def _add_rows(self, subjects: np.ndarray, samples: np.ndarray, vectors: np.ndarray) -> None:
        self._encode(vectors, self._rows.append(vectors))
        self._row_subject.append(subjects)
        self._row_sample.append(samples)
        self._row_alive.append(np.ones(len(vectors), dtype=bool))
        self._live_rows += len(vectors)

    def _kill_rows(self, rows: np.ndarray) -> None:
        alive = self._row_alive.values
        rows = rows[alive[rows]]
        alive[rows] = False
        self._live_rows -= len(rows)

    # -- reading --
    @property
    def vectors_version(self) -> int:
        return self._version

    @property
    def sample_count(self) -> int:
        return self._live_samples if self.scoring == "mean" else self._live_rows

    @property
    def subject_count(self) -> int:
        return len(self._names)

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        if not self.merge_searches:
            with self._lock.read():
                return self._search_now([_PendingSearch(queries, top_k)])[0]
        request = _PendingSearch(queries, top_k)
        with self._queue_lock:
            leading = self._running < self.search_slots
            if leading:
                self._running += 1
            else:
                self._queue.append(request)
        if not leading:
            request.done.wait()
            if not request.lead:
                if request.error is not None:
                    raise request.error
                assert request.result is not None
                return request.result
        return self._lead(request)

    def _lead(self, request: _PendingSearch) -> list[list[Candidate]]:
        """Run `request` and everything queued as one search; hand this slot to the first
        request queued meanwhile (it runs the next batch: no thread waits on purpose)."""
        with self._lock.read():
            with self._queue_lock:
                batch, self._queue = [request, *self._queue], []
            try:
                results = self._search_now(batch)
            except BaseException as error:
                results = None
                for pending in batch:
                    pending.error = error
        with self._queue_lock:
            successor = self._queue.pop(0) if self._queue else None
            if successor is None:
                self._running -= 1
        for pending, result in zip(batch, results or [None] * len(batch), strict=True):
            pending.result = result
            if pending is not request:
                pending.done.set()
        if successor is not None:
            successor.lead = True
            successor.done.set()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _search_now(self, batch: list[_PendingSearch]) -> list[list[list[Candidate]]]:
        """One search for every request of `batch` (the caller holds the read lock);
        each gets its own queries' rows, cut to its own top_k (the exact top k subjects are
        the first k of the exact top K, ties in subject-id order alike)."""
        queries = (
            batch[0].queries
            if len(batch) == 1
            else np.concatenate([pending.queries for pending in batch])
        )
        rows = self._search_pks(queries, max(pending.top_k for pending in batch))
        named = [[Candidate(self._name(pk), score) for pk, score in row] for row in rows]
        self.searches += 1
        results, start = [], 0
        for pending in batch:
            stop = start + len(pending.queries)
            results.append([row[: pending.top_k] for row in named[start:stop]])
            start = stop
        return results

    def top1_scores(self, queries: np.ndarray) -> tuple[np.ndarray, int]:
        with self._lock.read():
            return self._top1(np.ascontiguousarray(queries, dtype=np.float32)), self._version

    def _scan_threads(self) -> int:
        """Threads per scan of the codes: merged scans share the cores between their slots;
        a search of its own (merging off) runs beside the others, one thread each."""
        if not self.merge_searches:
            return 1
        return max(1, (os.cpu_count() or 1) // max(1, self.search_slots))

    def _approximate(
        self, queries: np.ndarray
    ) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
        """`search(which, k)`: the approximate top k rows of `queries[which]`. The shared scan
        reads the codes once for all `queries` and widens from what it computed; FAISS
        searches again on each call."""
        if isinstance(self._codes, Int8Codes):
            return self._codes.scan(queries, self._scan_threads()).top
        codes = self._codes
        return lambda which, k: codes.search(queries[which], k)

    def _top1(self, queries: np.ndarray) -> np.ndarray:
        """`search(queries, 1)`'s scores, vectorised over the queries (calibration sets run to
        thousands): the same window, the same exact scores."""
        if isinstance(self._codes, Int8Codes) and len(queries) > _SCAN_QUERIES:
            # A scan holds an int32 score per query and row: a bounded number of queries.
            return np.concatenate(
                [
                    self._top1(queries[start : start + _SCAN_QUERIES])
                    for start in range(0, len(queries), _SCAN_QUERIES)
                ]
            )
        result = np.full(len(queries), -np.inf, dtype=np.float64)
        total = int(self._codes.ntotal)
        if self._live_rows == 0 or not len(queries):
            return result
        bounds = self.error_bound(queries)
        pending = np.arange(len(queries))
        k = min(total, _FIRST_K)
        _apply_search_threads()
        search = self._approximate(queries)
        while len(pending):
            approximate, labels = search(pending, k)
            returned = labels >= 0
            alive = np.zeros_like(returned)
            alive[returned] = self._row_alive.values[labels[returned]]
            best = np.where(alive, approximate, -np.inf).max(axis=1)
            floor = best - 2.0 * bounds[pending]
            wider = returned.all(axis=1) & (k < total) & (approximate[:, -1] >= floor)
            take = alive & (approximate >= floor[:, None]) & ~wider[:, None]
            which, column = np.nonzero(take)
            rows, pairs = np.unique(labels[which, column], return_inverse=True)
            exact = _dot_rows(self._rows.read(rows)[pairs], queries[pending[which]])
            scores = np.full(len(pending), -np.inf)
            np.maximum.at(scores, which, exact)
            result[pending[~wider]] = scores[~wider]
            pending = pending[wider]
            k = min(total, 4 * k)
        return result

    def subject_scores(self, queries: np.ndarray, subject_id: str) -> np.ndarray | None:
        with self._lock.read():
            pk = self._names.pk(subject_id)
            if pk is None:
                return None
            rows = np.flatnonzero(self._row_alive.values & (self._row_subject.values == pk))
            if not len(rows):
                return None
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            return (queries @ self._rows.read(rows).T).max(axis=1).astype(np.float64)

    def subject_vectors(self, subject_id: str) -> np.ndarray | None:
        with self._lock.read():
            pk = self._names.pk(subject_id)
            if pk is None:
                return None
            rows = np.flatnonzero(self._row_alive.values & (self._row_subject.values == pk))
            return self._rows.read(rows) if len(rows) else None

    def _name(self, pk: int) -> str:
        name = self._names.name(pk)
        assert name is not None, f"subject pk {pk} has rows but no name"
        return name

    def _search_pks(self, queries: np.ndarray, top_k: int) -> list[list[tuple[int, float]]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if isinstance(self._codes, Int8Codes) and len(queries) > _SCAN_QUERIES:
            return [
                row
                for start in range(0, len(queries), _SCAN_QUERIES)
                for row in self._search_pks(queries[start : start + _SCAN_QUERIES], top_k)
            ]
        results: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        total = int(self._codes.ntotal)
        if self._live_rows == 0 or top_k <= 0 or not len(queries):
            return results
        bounds = self.error_bound(queries)
        pending = np.arange(len(queries))
        k = min(total, max(_FIRST_K, 16 * top_k))
        _apply_search_threads()
        search = self._approximate(queries)
        while len(pending):
            scores, labels = search(pending, k)
            retry = []
            for i, score_row, label_row in zip(pending.tolist(), scores, labels, strict=True):
                answer = self._rerank(queries[i], score_row, label_row, top_k, bounds[i], k, total)
                if answer is None:
                    retry.append(i)
                else:
                    results[i] = answer
            pending = np.array(retry, dtype=np.int64)
            k = min(total, 4 * k)
        return results

    def _rerank(
        self,
        query: np.ndarray,
        approximate: np.ndarray,
        labels: np.ndarray,
        top_k: int,
        bound: float,
        k: int,
        total: int,
    ) -> list[tuple[int, float]] | None:
        """The exact top-k from one query's approximate candidates (best first), or None when
        rows below those returned may still qualify (the caller searches wider)."""
        returned = labels >= 0
        full = bool(returned.all()) and k < total
        approximate, labels = approximate[returned], labels[returned]
        last = float(approximate[-1]) if len(approximate) else np.inf
        alive = self._row_alive.values[labels]
        approximate, labels = approximate[alive], labels[alive]
        subjects = self._row_subject.values[labels]
        _, first_rows = np.unique(subjects, return_index=True)
        if len(first_rows) >= top_k:
            # The rows down to the k-th subject's best hold k subjects; their exact scores give
            # k subjects scoring at least `kth`. A row whose approximate score is below
            # kth - bound scores exactly below kth: it can neither be in the top k nor be the
            # best row of a subject that is. (kth <= the k-th approximate score + bound, so
            # these rows are all above the floor.)
            seeds = int(np.sort(first_rows)[top_k - 1]) + 1
            seed_exact = self._exact(query, labels[:seeds])
            _, inverse = np.unique(subjects[:seeds], return_inverse=True)
            best_seen = np.full(top_k, -np.inf)
            np.maximum.at(best_seen, inverse, seed_exact)
            floor = float(best_seen.min()) - bound
        else:
            seeds, seed_exact, floor = 0, np.empty(0, dtype=np.float32), -np.inf
        if full and last >= floor:
            return None
        # Sorted best first: the candidates are a prefix, the seeds its start.
        count = max(seeds, int(np.count_nonzero(approximate >= floor)))
        labels, subjects = labels[:count], subjects[:count]
        exact = np.concatenate([seed_exact, self._exact(query, labels[seeds:])])
        order = np.lexsort((-exact, subjects))  # by subject, best first within each
        subjects, exact = subjects[order], exact[order]
        firsts = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1]])
        best, pks = exact[firsts], subjects[firsts]
        ranked = np.argsort(-best, kind="stable")
        if len(ranked) > top_k:  # the k-th score and every exact tie with it
            ranked = ranked[best[ranked] >= best[ranked[top_k - 1]]]
        # Exact ties keep subject-id order, as models.scoring.SubjectScorer does.
        chosen = sorted(
            (-float(best[i]), self._name(int(pks[i])), int(pks[i])) for i in ranked.tolist()
        )
        return [(pk, -negated) for negated, _, pk in chosen[:top_k]]

    def _exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact float32 scores of one query against `rows`."""
        if not len(rows):
            return np.empty(0, dtype=np.float32)
        return _dot_rows(self._rows.read(rows), np.broadcast_to(query, (len(rows), self.dim)))

    # -- mutating (the caller has committed the change to the store first) --
    def set_subject(self, pk: int, subject_id: str) -> None:
        with self._lock.write():
            self._names.set(pk, subject_id)

    def add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        self.add_many(
            np.full(len(sample_ids), pk, dtype=np.int64),
            [subject_id] * len(sample_ids),
            sample_ids,
            vectors,
        )

    def add_many(
        self,
        subject_pks: np.ndarray,
        subject_ids: list[str],
        sample_ids: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        subject_pks = np.asarray(subject_pks, dtype=np.int64)
        with self._lock.write():
            for pk, name in dict(zip(subject_pks.tolist(), subject_ids, strict=True)).items():
                self._names.set(pk, name)
            if self._add_samples(subject_pks, sample_ids, vectors):
                self._version += 1
                self._maybe_rebuild()

    def _fresh(self, sample_ids: np.ndarray) -> np.ndarray:
        """A mask of the ids not indexed yet (ids above every indexed one need no lookup)."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        fresh = ids > self._max_sample_id
        if not fresh.all():
            known = self._sample_ids_alive()
            fresh |= ~np.isin(ids, known)
        _, first = np.unique(ids, return_index=True)  # an id twice in one call: once
        once = np.zeros(len(ids), dtype=bool)
        once[first] = True
        return fresh & once

    def _sample_ids_alive(self) -> np.ndarray:
        if self.scoring == "mean":
            return self._sample_id.values[self._sample_alive.values]
        return self._row_sample.values[self._row_alive.values]

    def _add_samples(
        self, subjects: np.ndarray, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> bool:
        """Sample i of subject `subjects[i]`; those already indexed are skipped."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        fresh = self._fresh(sample_ids)
        if not fresh.any():
            return False
        sample_ids, subjects = sample_ids[fresh], np.asarray(subjects, dtype=np.int64)[fresh]
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[fresh])
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [N, {self.dim}]")
        self._max_sample_id = max(self._max_sample_id, int(sample_ids.max()))
        if self.scoring == "max":
            self._add_rows(subjects, sample_ids, vectors)
            return True
        assert self._samples is not None
        self._samples.append(vectors)
        self._sample_id.append(sample_ids)
        self._sample_subject.append(subjects)
        self._sample_alive.append(np.ones(len(sample_ids), dtype=bool))
        self._live_samples += len(sample_ids)
        self._refresh_templates(np.unique(subjects))
        return True

    def _refresh_templates(self, pks: np.ndarray) -> None:
        """Replace the template rows of `pks` by their samples' normalised sum."""
        rows = np.flatnonzero(self._row_alive.values & np.isin(self._row_subject.values, pks))
        self._kill_rows(rows)
        assert self._samples is not None
        live = self._sample_alive.values
        for pk in pks.tolist():
            members = np.flatnonzero(live & (self._sample_subject.values == pk))
            if len(members):
                summed = self._samples.read(members).astype(np.float64).sum(axis=0)
                template = l2_normalise(summed[None, :], "template", allow_zero=True)
                self._add_rows(np.array([pk]), np.array([-1]), template)

    def remove_samples(self, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            if self._remove_samples(sample_ids):
                self._version += 1
                self._maybe_rebuild()

    def _remove_samples(self, sample_ids: np.ndarray) -> bool:
        ids = np.asarray(sample_ids, dtype=np.int64)
        if not len(ids):
            return False
        if self.scoring == "max":
            hit = np.flatnonzero(self._row_alive.values & np.isin(self._row_sample.values, ids))
            self._kill_rows(hit)
            return bool(len(hit))
        alive = self._sample_alive.values
        hit = np.flatnonzero(alive & np.isin(self._sample_id.values, ids))
        if not len(hit):
            return False
        alive[hit] = False
        self._live_samples -= len(hit)
        self._refresh_templates(np.unique(self._sample_subject.values[hit]))
        return True

    def remove_subject(self, pk: int, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            if self._remove_samples(sample_ids):
                self._version += 1
            rows = np.flatnonzero(self._row_alive.values & (self._row_subject.values == pk))
            self._kill_rows(rows)  # "mean": a template whose samples the caller did not list
            self._names.remove(pk)
            self._maybe_rebuild()

    # -- snapshots --
    def _forget_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.unlink(missing_ok=True)
            self._snapshot = None
            self._rows.keep(False)
            if self._samples is not None:
                self._samples.keep(False)

    def _settings(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "dim": self.dim,
            "scoring": self.scoring,
            "ivf_lists": self.ivf_lists,
            "nprobe": self.nprobe,
        }

    def save_snapshot(
        self, meta_path: Path, key: dict, attached: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Write what a restart needs to skip the database (the codes, the row tables, the
        names; the float32 rows stay in their files) with the caller's `attached` arrays, and
        `meta_path`, last, naming `key`."""
        with self._lock.read():
            if self._rows.path is None:
                raise ValueError("an index without a directory has no files to snapshot")
            names = self._names
            if names._added or names._hidden:
                names = SubjectNames(dict(names.items()))
            arrays = {
                "name_by_hash": names._by_hash,
                "row_subject": self._row_subject.values,
                "row_sample": self._row_sample.values,
                "row_alive": self._row_alive.values,
                "sample_id": self._sample_id.values,
                "sample_subject": self._sample_subject.values,
                "sample_alive": self._sample_alive.values,
                "name_pks": names._pks,
                "name_offsets": names._offsets,
                "name_blob": np.frombuffer(names._blob, dtype=np.uint8),
            }
            arrays |= {_ATTACHED + name: value for name, value in (attached or {}).items()}
            files = [self._rows] + ([self._samples] if self._samples is not None else [])
            for file in files:
                file.sync()
                file.keep()
            if isinstance(self._codes, Int8Codes):
                arrays["vmin"], arrays["vdiff"] = self._codes.vmin, self._codes.vdiff
                arrays |= {f"codes_{i}": b for i, b in enumerate(self._codes.blocks())}
            else:
                codes_path = meta_path.with_suffix(".faiss")
                partial = codes_path.with_name(codes_path.name + ".partial")
                faiss.write_index(self._codes, str(partial))
                with open(partial, "rb") as handle:
                    os.fsync(handle.fileno())
                partial.replace(codes_path)
            arrays_path = meta_path.with_suffix(".npz")
            partial = arrays_path.with_name(arrays_path.name + ".partial")
            with open(partial, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(arrays_path)
            meta = {
                **self._settings(),
                "key": key,
                "rows_file": self._rows.path.name,
                "rows": self._rows.rows,
                "samples_file": self._samples.path.name
                if self._samples and self._samples.path
                else None,
                "samples": self._samples.rows if self._samples is not None else 0,
                "error": self._error,
                "max_code_norm": getattr(self._codes, "max_code_norm", 0.0),
                "trained_rows": self._trained_rows,
                "live_rows": self._live_rows,
                "live_samples": self._live_samples,
                "max_sample_id": self._max_sample_id,
            }
            partial = meta_path.with_name(meta_path.name + ".partial")
            partial.write_text(json.dumps(meta))
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            partial.replace(meta_path)
            if self._snapshot is not None and self._snapshot != meta_path:
                self._snapshot.unlink(missing_ok=True)
            self._snapshot = meta_path

    @classmethod
    def load_snapshot(
        cls,
        meta_path: Path,
        key: dict,
        dim: int,
        scoring: str,
        *,
        directory: Path,
        ivf_lists: int = 0,
        nprobe: int = 16,
    ) -> Snapshot | None:
        """The index saved at `meta_path` (with its attached arrays) if it was saved for `key`
        with these settings and its files are whole; None otherwise (the caller rebuilds from
        the database)."""
        index = cls(dim, scoring, directory=None, ivf_lists=ivf_lists, nprobe=nprobe)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if (
            meta.get("key") != key
            or {k: meta.get(k) for k in index._settings()} != index._settings()
        ):
            return None
        try:
            with np.load(meta_path.with_suffix(".npz")) as arrays:
                loaded = {name: arrays[name] for name in arrays.files}
            rows_path = directory / meta["rows_file"]
            if rows_path.stat().st_size < meta["rows"] * 4 * dim:
                return None
            samples_path = directory / meta["samples_file"] if meta["samples_file"] else None
            if samples_path is not None and samples_path.stat().st_size < meta["samples"] * 4 * dim:
                return None
        except (OSError, ValueError, KeyError):
            return None
        index._directory = directory
        index._rows.close()
        index._rows = RowFile(dim, path=rows_path, rows=meta["rows"])
        index._rows.keep()
        if index._samples is not None:
            index._samples.close()
            if samples_path is None:
                return None
            index._samples = RowFile(dim, path=samples_path, rows=meta["samples"])
            index._samples.keep()
        if ivf_lists:
            try:
                index._codes = faiss.read_index(str(meta_path.with_suffix(".faiss")))
            except RuntimeError:
                return None
            index._codes.nprobe = min(nprobe, index._codes.nlist)
            index._sq = index._codes.sq
        else:
            vmin, vdiff = loaded["vmin"], loaded["vdiff"]
            index._new_codes(vmin, vmin + vdiff, None)  # the encoder, trained as saved
            faiss.copy_array_to_vector(
                np.concatenate([vmin, vdiff]).astype(np.float32), index._sq.trained
            )
            blocks = [loaded[f"codes_{i}"] for i in range(len(loaded)) if f"codes_{i}" in loaded]
            index._codes = Int8Codes.from_blocks(
                dim, vmin, vdiff, blocks, float(meta["max_code_norm"])
            )
            if index._codes.ntotal != len(loaded["row_alive"]):
                return None
        for name in ("row_subject", "row_sample", "row_alive"):
            getattr(index, f"_{name}").replace(loaded[name])
        for name in ("sample_id", "sample_subject", "sample_alive"):
            getattr(index, f"_{name}").replace(loaded[name])
        names = SubjectNames({})
        names._pks = loaded["name_pks"]
        names._offsets = loaded["name_offsets"]
        names._blob = loaded["name_blob"].tobytes()
        names._index_hashes(loaded["name_by_hash"])
        index._names = names
        index._error = float(meta["error"])
        index._trained_rows = int(meta["trained_rows"])
        index._live_rows = int(meta["live_rows"])
        index._live_samples = int(meta["live_samples"])
        index._max_sample_id = int(meta["max_sample_id"])
        index._snapshot = meta_path
        attached = {
            name.removeprefix(_ATTACHED): value
            for name, value in loaded.items()
            if name.startswith(_ATTACHED)
        }
        return Snapshot(index, attached)

    # -- building --
    @classmethod
    def from_contents(
        cls, dim: int, scoring: str, contents: IndexContents, **options: object
    ) -> QuantizedSubjectIndex:
        index = cls(dim, scoring, **options)  # type: ignore[arg-type]
        index._names = SubjectNames(contents.subjects)
        sample_ids = np.asarray(contents.sample_ids, dtype=np.int64)
        subject_pks = np.asarray(contents.subject_pks, dtype=np.int64)
        vectors = contents.vectors
        if not len(sample_ids):
            return index
        index._max_sample_id = int(sample_ids.max())
        if scoring == "max":
            index._row_subject.replace(subject_pks)
            index._row_sample.replace(sample_ids)
            index._row_alive.replace(np.ones(len(sample_ids), dtype=bool))
            index._live_rows = len(sample_ids)
            index._rebuild(vectors)
        else:
            assert index._samples is not None
            index._samples.append(vectors)
            index._sample_id.replace(sample_ids)
            index._sample_subject.replace(subject_pks)
            index._sample_alive.replace(np.ones(len(sample_ids), dtype=bool))
            index._live_samples = len(sample_ids)
            order = np.argsort(subject_pks, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(subject_pks[order]) != 0])
            bounds = np.r_[starts, len(order)]
            for first in range(0, len(starts), _CHUNK_ROWS):
                last = min(first + _CHUNK_ROWS, len(starts))
                low, high = bounds[first], bounds[last]
                members = order[low:high]
                sums = np.add.reduceat(
                    vectors[members].astype(np.float64), bounds[first:last] - low, axis=0
                )
                templates = l2_normalise(sums, "templates", allow_zero=True)
                pks = subject_pks[order[bounds[first:last]]]
                index._rows.append(templates)
                index._row_subject.append(pks)
                index._row_sample.append(np.full(len(pks), -1, dtype=np.int64))
                index._row_alive.append(np.ones(len(pks), dtype=bool))
                index._live_rows += len(pks)
            index._rebuild()
        return index


class QuantizedBackend:
    """`faiss://?storage=sq8[&ivf=<lists>&nprobe=<n>]`: 8-bit codes in memory, float32 on
    disk, exact re-ranking; with a directory, snapshots that a restart loads instead of
    reading every embedding from the database."""

    name = "faiss"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        ivf_lists: int = 0,
        nprobe: int = 16,
        merge_searches: bool = False,
        search_slots: int | None = None,
    ) -> None:
        self.directory = directory
        self.ivf_lists = ivf_lists
        self.nprobe = nprobe
        self.merge_searches = merge_searches
        self.search_slots = search_slots
        if directory is not None:
            self._remove_orphans(directory)

    @staticmethod
    def _remove_orphans(directory: Path) -> None:
        """Row files no snapshot refers to (left by a process that stopped without saving)
        and half-written snapshot files."""
        if not directory.is_dir():
            return
        referenced = set()
        for meta_path in directory.glob("snapshot-*.json"):
            try:
                meta = json.loads(meta_path.read_text())
                referenced |= {meta.get("rows_file"), meta.get("samples_file")}
            except (OSError, ValueError):
                meta_path.unlink(missing_ok=True)
        for path in [*directory.glob("rows-*.f32"), *directory.glob("*.partial")]:
            if path.name not in referenced:
                path.unlink(missing_ok=True)

    def build(
        self,
        dim: int,
        scoring: str,
        contents: IndexContents,
        *,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> QuantizedSubjectIndex:
        index = QuantizedSubjectIndex.from_contents(
            dim,
            scoring,
            contents,
            directory=self.directory,
            ivf_lists=self.ivf_lists,
            nprobe=self.nprobe,
        )
        self._configure(index)
        return index

    def _configure(self, index: QuantizedSubjectIndex) -> None:
        index.merge_searches = self.merge_searches
        if self.search_slots is not None:
            index.search_slots = self.search_slots

    def _meta_path(self, gallery: str, model_id: str) -> Path:
        assert self.directory is not None
        digest = hashlib.sha256(f"{gallery}\0{model_id}".encode()).hexdigest()[:32]
        return self.directory / f"snapshot-{digest}.json"

    def load_snapshot(
        self, gallery: str, model_id: str, version: int, dim: int, scoring: str
    ) -> Snapshot | None:
        """The saved index of (gallery, model) and its attached arrays if it was saved at the
        database's `version`; None otherwise. A stale snapshot is removed with its files."""
        if self.directory is None:
            return None
        meta_path = self._meta_path(gallery, model_id)
        if not meta_path.exists():
            return None
        key = {"gallery": gallery, "model_id": model_id, "version": version}
        try:
            snapshot = QuantizedSubjectIndex.load_snapshot(
                meta_path,
                key,
                dim,
                scoring,
                directory=self.directory,
                ivf_lists=self.ivf_lists,
                nprobe=self.nprobe,
            )
        except Exception:  # any damage: the database still has everything
            logger.exception("index snapshot %s unreadable: rebuilding", meta_path.name)
            snapshot = None
        if snapshot is None:
            self._remove_snapshot(meta_path)
        else:
            assert isinstance(snapshot.index, QuantizedSubjectIndex)
            self._configure(snapshot.index)
        return snapshot

    def _remove_snapshot(self, meta_path: Path) -> None:
        assert self.directory is not None
        try:
            meta = json.loads(meta_path.read_text())
            files = [meta.get("rows_file"), meta.get("samples_file")]
        except (OSError, ValueError):
            files = []
        meta_path.unlink(missing_ok=True)
        meta_path.with_suffix(".npz").unlink(missing_ok=True)
        meta_path.with_suffix(".faiss").unlink(missing_ok=True)
        for name in files:
            if name:
                (self.directory / name).unlink(missing_ok=True)

    def retain_snapshots(self, kept: set[tuple[str, str]]) -> None:
        """Remove every snapshot but those of the (gallery, model) pairs in `kept`: a deleted
        gallery's, a model's a gallery migrated away from."""
        if self.directory is None or not self.directory.is_dir():
            return
        wanted = {self._meta_path(gallery, model_id) for gallery, model_id in kept}
        for meta_path in self.directory.glob("snapshot-*.json"):
            if meta_path not in wanted:
                self._remove_snapshot(meta_path)

    def save_snapshot(
        self,
        index: QuantizedSubjectIndex,
        gallery: str,
        model_id: str,
        version: int,
        attached: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Save `index` as (gallery, model) at database `version`, with `attached`; the caller
        holds the gallery's mutation lock, so that `version` is the version the index (and
        what is attached) reflects."""
        if self.directory is None:
            return
        key = {"gallery": gallery, "model_id": model_id, "version": version}
        index.save_snapshot(self._meta_path(gallery, model_id), key, attached)
