"""Subject search in a Milvus server (`milvus://host:port`): galleries larger than one machine.

One collection per gallery and model, holding the gallery's samples (`kind` 0, id = sample id)
and, for "mean" galleries, one template per subject (`kind` 1, id = TEMPLATE_IDS + subject pk):
the L2-normalised sum of its samples, as the FAISS backend computes it, with that sum and the
subject's sample count (`kind` 3, id = SUM_IDS + subject pk), so that a writer updates a
template from the samples it adds or removes, reading rows by id only. Each row carries its
subject's pk and id, so a search answers from Milvus alone. The process holds no vectors: only
which samples belong to which subject (integers), for counts and a subject's own vectors.

- "max": a search widens until it has `top_k` distinct subjects (exact: a subject's best
  sample is met before any of its others), as FAISS does; past Milvus's largest `limit` it
  asks Milvus to group by subject instead.
- "mean": a search of the templates.

Exact search (a FLAT index, inner product) by default; `?index=HNSW&M=16&efConstruction=200&ef=64`
chooses another index type with its build parameters and search parameters (`ef`, `nprobe`,
`search_list` are search parameters, every other key a build parameter). `?prefix=NAME` names
the collections (default `opengallery`), `?db=NAME` the Milvus database, `?secure=true` uses
TLS; `milvus://user:password@host:port` authenticates.

Replicas share the collections. Once `coordinate` gave the backend the database's mutex
(`Store.exclusive`), a gallery's collection has one writer at a time: the process that commits
a change to the database holds the collection's mutex (`writing()`) from before that commit
until the change is in Milvus, so Milvus receives the changes of one collection in commit
order, and a "mean" template is updated from its subject's sum under it. Any other
mutation (a change log follower applying another process's change) updates this process's
sample-to-subject map only. A build, under the same mutex, reuses the collection when it holds
exactly the database's samples (checked without moving vectors), repairs what differs, and
creates it only when it is missing or made for another dimension or index type.

Milvus errors surface as IndexUnavailable, naming the server without its credentials.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
from pymilvus import DataType, MilvusClient

from models.scoring import check_scoring, l2_normalise
from service.index.base import (
    Candidate,
    IndexConfigError,
    IndexContents,
    IndexUnavailable,
    distinct_subjects,
)
from service.index.locks import RWLock

TEMPLATE_IDS = 1 << 62  # template ids: above every sample id the database hands out
SUM_IDS = TEMPLATE_IDS + (1 << 61)  # a "mean" subject's running sum of its samples
SAMPLE, TEMPLATE, DIGEST, SUM = 0, 1, 2, 3
# The row holding the collection's digest of its samples (see `samples_digest`).
DIGEST_ID = (1 << 63) - 1
MAX_LIMIT = 16384  # Milvus's largest `limit` (top-k) and query window
INSERT_BATCH = 4096  # rows per upsert call (gRPC messages stay well under their 64 MiB cap)
SUBJECT_ID_BYTES = 1024  # a subject id: at most 256 characters (service/core/ids.py) of UTF-8
FIELDS = ("id", "subject_pk", "subject_id", "kind", "members", "vector")
SEARCH_KEYS = {"ef", "nprobe", "search_list"}
OWN_KEYS = {"index", "prefix", "db", "secure", "timeout"}

T = TypeVar("T")
Exclusive = Callable[[str], AbstractContextManager[None]]


def _template(summed: np.ndarray) -> np.ndarray:
    """A "mean" subject's template: its samples' sum, normalised (zero if they cancel out)."""
    return l2_normalise(summed[None, :], "template", allow_zero=True)[0]


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def samples_digest(sample_ids: np.ndarray, subject_pks: np.ndarray) -> int:
    """A 64-bit digest of a set of (sample id, subject pk) pairs: the XOR of each pair's hash
    (splitmix64), so that a writer updates it by its own additions and removals alone, and a
    start compares the database's set with the collection's without reading the collection."""
    with np.errstate(over="ignore"):
        z = np.asarray(sample_ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= np.asarray(subject_pks, dtype=np.uint64) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    digest = int(np.bitwise_xor.reduce(z)) if len(z) else 0
    return digest - (1 << 64) if digest >= 1 << 63 else digest  # Milvus's INT64 is signed


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


class MilvusConfig:
    """What a `milvus://` URL says: the server, the credentials, the index to build."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "milvus" or not parts.hostname:
            raise IndexConfigError("a Milvus index URL is milvus://[user:password@]host:port")
        port = parts.port or 19530
        self.shown_url = f"milvus://{parts.hostname}:{port}"  # no credentials, ever
        query = dict(parse_qsl(parts.query))
        secure = query.get("secure", "false").lower() in {"1", "true", "yes"}
        self.uri = f"{'https' if secure else 'http'}://{parts.hostname}:{port}"
        self.token = (
            f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            if parts.username
            else ""
        )
        self.db_name = query.get("db", "")
        self.prefix = query.get("prefix", "opengallery")
        if not self.prefix.replace("_", "a").isalnum() or not self.prefix[0].isalpha():
            raise IndexConfigError(
                f"index URL prefix {self.prefix!r}: letters, digits and '_', a letter first"
            )
        self.timeout = float(query.get("timeout", "30"))
        self.index_type = query.get("index", "FLAT").upper()
        extra = {k: _number(v) for k, v in query.items() if k not in OWN_KEYS}
        self.build_params = {k: v for k, v in extra.items() if k not in SEARCH_KEYS}
        # The index a collection is built with, as its digest row records it: a start with
        # another one makes the collection afresh.
        self.signature = " ".join(
            [self.index_type, *(f"{k}={v}" for k, v in sorted(self.build_params.items()))]
        )
        self.search_params = {k: v for k, v in extra.items() if k in SEARCH_KEYS}

    def collection_name(self, gallery: str | None, model_id: str | None) -> str:
        if gallery is None or model_id is None:
            return f"{self.prefix}_{uuid.uuid4().hex}"
        digest = hashlib.sha256(f"{gallery}\0{model_id}".encode()).hexdigest()[:32]
        return f"{self.prefix}_{digest}"


# Milvus's code for a collection it holds but has not loaded into memory: what a restarted
# server answers (milvus-lite does not reload its collections by itself).
COLLECTION_NOT_LOADED = 101


class MilvusConnection:
    """One client for the process; each call's Milvus error becomes IndexUnavailable."""

    def __init__(self, config: MilvusConfig) -> None:
        self.config = config
        try:
            self.client = MilvusClient(
                uri=config.uri,
                token=config.token,
                db_name=config.db_name,
                timeout=config.timeout,
            )
            self.client.list_collections(timeout=config.timeout)
        except Exception as error:  # pymilvus raises its own and gRPC's errors
            raise IndexUnavailable(
                f"cannot reach Milvus at {config.shown_url}: {' '.join(str(error).split())}"
            ) from None

    def call(self, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # Every call gets the URL's timeout: without one, pymilvus retries a server that does
        # not answer for a minute, and a request waits that long.
        kwargs.setdefault("timeout", self.config.timeout)
        try:
            return action(*args, **kwargs)
        except Exception as error:
            raise IndexUnavailable(
                f"Milvus at {self.config.shown_url} failed: {' '.join(str(error).split())}"
            ) from error

    def untimed(self, action: Callable[..., T], *args: Any) -> T:
        """`call` for what takes no timeout (a query iterator's next page)."""
        try:
            return action(*args)
        except Exception as error:
            raise IndexUnavailable(
                f"Milvus at {self.config.shown_url} failed: {' '.join(str(error).split())}"
            ) from error

    def read(self, collection: str, action: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A search or get of `collection`; one the server holds without having it loaded (it
        restarted) is loaded and the call made again, so that service resumes by itself."""
        try:
            return self.call(action, *args, **kwargs)
        except IndexUnavailable as error:
            if getattr(error.__cause__, "code", None) != COLLECTION_NOT_LOADED:
                raise
        self.call(self.client.load_collection, collection)
        return self.call(action, *args, **kwargs)


class MilvusSubjectIndex:
    """One gallery's index for one model in a Milvus collection (implements SubjectSearch)."""

    def __init__(
        self,
        connection: MilvusConnection,
        collection: str,
        dim: int,
        scoring: str,
        exclusive: Exclusive | None = None,
    ) -> None:
        """`exclusive`: the database's mutex when replicas share the collection (None: this
        process is its only user and writes every mutation)."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.scoring = check_scoring(scoring)
        self.collection = collection
        self._milvus = connection
        self._client = connection.client
        self._exclusive = exclusive
        self._writer = threading.local()  # `depth`: this thread holds `writing()`
        self._lock = RWLock()
        self._sample_subject: dict[int, int] = {}
        self._subject_samples: dict[int, set[int]] = {}
        self._subject_names: dict[int, str] = {}
        self._subject_pks: dict[str, int] = {}
        # How the last build found the collection ("created", "repaired", "reused") and how
        # many rows it wrote: what start-up cost, for logs, benchmarks and tests.
        self.opened = "created"
        self.rows_written = 0

    # -- the writer --
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held by the process that commits a change of this gallery to the database, from
        before its commit until the change is applied here: the collection's mutex, so that
        Milvus receives the changes of the collection in commit order, one writer at a time.
        Mutations made without it change this process's map only (the writer wrote them)."""
        if self._exclusive is None or getattr(self._writer, "depth", 0):
            yield
            return
        with self._exclusive(lock_name(self.collection)):
            self._writer.depth = 1
            try:
                yield
            finally:
                self._writer.depth = 0

    def settled(self) -> AbstractContextManager[None]:
        """Held by a process applying a change that another process committed (read from the
        change log): the committer holds the collection's mutex until the change is in
        Milvus, so taking it waits until it is there; mutations stay this process's own."""
        if self._exclusive is None or getattr(self._writer, "depth", 0):
            return nullcontext()
        return self._exclusive(lock_name(self.collection))

    def _writes(self) -> bool:
        return self._exclusive is None or getattr(self._writer, "depth", 0) > 0

    # -- the collection --
    def _create(self) -> None:
        config = self._milvus.config
        client = self._client
        if self._milvus.call(client.has_collection, self.collection):
            self._milvus.call(client.drop_collection, self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("subject_pk", DataType.INT64)
        schema.add_field("subject_id", DataType.VARCHAR, max_length=SUBJECT_ID_BYTES)
        schema.add_field("kind", DataType.INT8)
        schema.add_field("members", DataType.INT64)  # a sum row's sample count; 0 elsewhere
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_type=config.index_type,
            metric_type="IP",
            params=config.build_params,
        )
        self._milvus.call(
            client.create_collection,
            self.collection,
            schema=schema,
            index_params=index_params,
            consistency_level="Strong",  # a committed enrolment is searchable at once
        )

    def _reusable(self) -> tuple[bool, int | None]:
        """Whether the server holds this collection with our fields, dimension and index
        (anything else is made afresh), and the digest of its samples it holds (None: none)."""
        client = self._client
        if not self._milvus.call(client.has_collection, self.collection):
            return False, None
        described = self._milvus.call(client.describe_collection, self.collection)
        fields = {field["name"]: field for field in described["fields"]}
        if tuple(fields) != FIELDS:
            return False, None
        if int(fields["vector"].get("params", {}).get("dim", 0)) != self.dim:
            return False, None
        row = self._get([DIGEST_ID], ["subject_pk", "subject_id"]).get(DIGEST_ID)
        if row is not None:  # it names the index it was built with
            return str(row["subject_id"]) == self._milvus.config.signature, int(row["subject_pk"])
        # No digest (its build stopped early): the server describes the index (slowly).
        indexes = self._milvus.call(client.list_indexes, self.collection)
        if len(indexes) != 1:
            return False, None
        index = self._milvus.call(client.describe_index, self.collection, indexes[0])
        return str(index.get("index_type", "")).upper() == self._milvus.config.index_type, None

    def drop(self) -> None:
        """Remove the collection from the server (a gallery deleted, a model retired)."""
        self._milvus.call(self._client.drop_collection, self.collection)

    def _upsert(
        self,
        ids: np.ndarray,
        pks: np.ndarray,
        names: list[str],
        kind: int,
        vectors: np.ndarray,
        members: np.ndarray | None = None,
    ) -> None:
        """Write rows (replacing any of the same id: writing a row twice leaves one)."""
        counts = np.zeros(len(ids), dtype=np.int64) if members is None else members
        for start in range(0, len(ids), INSERT_BATCH):
            end = start + INSERT_BATCH
            rows = [
                {
                    "id": i,
                    "subject_pk": pk,
                    "subject_id": name,
                    "kind": kind,
                    "members": count,
                    "vector": vector,
                }
                for i, pk, name, count, vector in zip(
                    ids[start:end].tolist(),
                    pks[start:end].tolist(),
                    names[start:end],
                    counts[start:end].tolist(),
                    vectors[start:end].tolist(),
                    strict=True,
                )
            ]
            self._milvus.call(self._client.upsert, self.collection, rows)
            self.rows_written += len(rows)

    def _delete(self, ids: list[int]) -> None:
        for chunk in _chunks(ids, MAX_LIMIT):
            self._milvus.call(self._client.delete, self.collection, ids=chunk)

    def _get(self, ids: list[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        """The rows of those of `ids` the collection holds, by id."""
        found: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(ids, MAX_LIMIT):
            rows = self._milvus.read(
                self.collection, self._client.get, self.collection, ids=chunk, output_fields=fields
            )
            found.update({int(row["id"]): row for row in rows})
        return found

    def _fetch_vectors(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of `ids`, in that order."""
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        found = self._get(ids, ["vector"])
        return np.asarray([found[i]["vector"] for i in ids], dtype=np.float32)

    def _count(self, kind: int) -> int:
        rows = self._milvus.read(
            self.collection,
            self._client.query,
            self.collection,
            filter=f"kind == {kind}",
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"])

    def _scan(self, expression: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching `expression`, page by page."""
        iterator = self._milvus.call(
            self._client.query_iterator,
            self.collection,
            batch_size=MAX_LIMIT,
            filter=expression,
            output_fields=fields,
        )
        rows: list[dict[str, Any]] = []
        try:
            while batch := self._milvus.untimed(iterator.next):
                rows.extend(batch)
        finally:
            iterator.close()
        return rows

    def _search(
        self, queries: np.ndarray, limit: int, kind: int, group: bool = False
    ) -> list[list[tuple[int, int, str, float]]]:
        """Per query, (id, subject pk, subject id, score) best first."""
        extra: dict[str, Any] = {"group_by_field": "subject_pk"} if group else {}
        results = self._milvus.read(
            self.collection,
            self._client.search,
            self.collection,
            data=np.ascontiguousarray(queries, dtype=np.float32).tolist(),
            limit=limit,
            filter=f"kind == {kind}",
            output_fields=["subject_pk", "subject_id"],
            search_params={"metric_type": "IP", "params": self._milvus.config.search_params},
            **extra,
        )
        return [
            [
                (
                    int(hit["id"]),
                    int(hit["entity"]["subject_pk"]),
                    str(hit["entity"]["subject_id"]),
                    float(hit["distance"]),
                )
                for hit in row
            ]
            for row in results
        ]

    # -- reading --
    @property
    def sample_count(self) -> int:
        return len(self._sample_subject)

    @property
    def subject_count(self) -> int:
        return len(self._subject_names)

    def _check(self, queries: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(queries, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [N, {self.dim}], got {list(array.shape)}")
        return array

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Candidate]]:
        queries = self._check(queries)
        with self._lock.read():
            return [
                [Candidate(name, score) for name, score in row]
                for row in self._search_subjects(queries, top_k)
            ]

    def _searchable(self) -> int:
        return len(self._sample_subject) if self.scoring == "max" else self._templates()

    def _templates(self) -> int:
        return sum(1 for members in self._subject_samples.values() if members)

    def _search_subjects(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """Per query, (subject id, score) of the best `top_k` subjects. The rows name their
        subjects: a subject another replica enrolled a moment ago is answered by name even
        before this process's map has it (the map only bounds how far a search widens)."""
        total = self._searchable()
        if total == 0 or top_k <= 0 or not len(queries):
            return [[] for _ in range(len(queries))]
        if self.scoring == "mean":
            hits = self._search(queries, min(top_k, total, MAX_LIMIT), TEMPLATE)
            return [[(name, score) for _, _, name, score in row] for row in hits]
        k = min(total, max(2 * top_k, top_k + 8), MAX_LIMIT)
        while True:
            hits = self._search(queries, k, SAMPLE)
            rows: list[list[tuple[str, float]]] = []
            for row in hits:
                names = {pk: name for _, pk, name, _ in row}
                found = distinct_subjects(((pk, score) for _, pk, _, score in row), top_k)
                if len(found) < top_k and k < total:
                    break
                rows.append([(names[pk], score) for pk, score in found])
            else:
                return rows
            if k == MAX_LIMIT:  # Milvus cannot widen further: it groups by subject itself
                hits = self._search(queries, min(top_k, MAX_LIMIT), SAMPLE, group=True)
                return [[(name, score) for _, _, name, score in row] for row in hits]
            k = min(total, 4 * k, MAX_LIMIT)

    def subject_vectors(self, subject_id: str) -> np.ndarray | None:
        with self._lock.read():
            pk = self._subject_pks.get(subject_id)
            if pk is None or not self._subject_samples.get(pk):
                return None
            if self.scoring == "mean":
                return self._fetch_vectors([TEMPLATE_IDS + pk])
            return self._fetch_vectors(sorted(self._subject_samples[pk]))

    def subject_scores(self, queries: np.ndarray, subject_id: str) -> np.ndarray | None:
        queries = self._check(queries)
        vectors = self.subject_vectors(subject_id)
        if vectors is None:
            return None
        return (queries @ vectors.T).max(axis=1).astype(np.float64)

    # -- mutating (the caller has committed the change to the store first) --
    def set_subject(self, pk: int, subject_id: str) -> None:
        with self._lock.write():
            self._subject_names[pk] = subject_id
            self._subject_pks[subject_id] = pk
            self._subject_samples.setdefault(pk, set())

    def add_samples(
        self, pk: int, subject_id: str, sample_ids: np.ndarray, vectors: np.ndarray
    ) -> None:
        ids = np.asarray(sample_ids, dtype=np.int64)
        self.add_many(np.full(len(ids), pk, dtype=np.int64), [subject_id] * len(ids), ids, vectors)

    def add_many(
        self,
        subject_pks: np.ndarray,
        subject_ids: list[str],
        sample_ids: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        pks = np.asarray(subject_pks, dtype=np.int64)
        ids = np.asarray(sample_ids, dtype=np.int64)
        with self._lock.write():
            for pk, name in zip(pks.tolist(), subject_ids, strict=True):
                self._subject_names[pk] = name
                self._subject_pks[name] = pk
                self._subject_samples.setdefault(pk, set())
            fresh = [i for i, sid in enumerate(ids.tolist()) if sid not in self._sample_subject]
            if not fresh:
                return
            if self._writes():
                self._upsert(
                    ids[fresh],
                    pks[fresh],
                    [subject_ids[i] for i in fresh],
                    SAMPLE,
                    self._check(np.asarray(vectors)[fresh]),
                )
                if self.scoring == "mean":
                    added = np.asarray(vectors, dtype=np.float64)[fresh]
                    self._change_sums(pks[fresh], added, 1, [subject_ids[i] for i in fresh])
                self._update_digest(samples_digest(ids[fresh], pks[fresh]))
            for i in fresh:
                self._sample_subject[int(ids[i])] = int(pks[i])
                self._subject_samples[int(pks[i])].add(int(ids[i]))

    def _change_sums(
        self, pks: np.ndarray, vectors: np.ndarray, sign: int, names: list[str] | None = None
    ) -> None:
        """Add (`sign` 1) or take away (-1) samples' vectors to or from their subjects' sum
        rows, and rewrite those subjects' templates from the sums; a subject left with no
        samples loses both rows. The writer holds `writing()`: every committed change of the
        collection has reached the sums, in commit order, so they are the database's. Rows
        are read by id only (on Milvus a filtered query scans the collection)."""
        order = sorted(set(pks.tolist()))
        held = self._get([SUM_IDS + pk for pk in order], ["vector", "members", "subject_id"])
        given = dict(zip(pks.tolist(), names, strict=True)) if names is not None else {}
        live: list[int] = []
        sums: list[np.ndarray] = []
        counts: list[int] = []
        labels: list[str] = []
        gone: list[int] = []
        for pk in order:
            mine = pks == pk
            row = held.get(SUM_IDS + pk)
            total = np.asarray(row["vector"], np.float64) if row else np.zeros(self.dim)
            count = (int(row["members"]) if row else 0) + sign * int(mine.sum())
            if count <= 0:
                gone.append(pk)
                continue
            live.append(pk)
            sums.append(total + sign * np.asarray(vectors, np.float64)[mine].sum(axis=0))
            counts.append(count)
            labels.append(given.get(pk) or (str(row["subject_id"]) if row else str(pk)))
        if gone:
            self._delete([base + pk for pk in gone for base in (TEMPLATE_IDS, SUM_IDS)])
        if live:
            pk_array = np.asarray(live, dtype=np.int64)
            summed = np.stack(sums).astype(np.float32)
            templates = np.stack([_template(total) for total in summed])
            self._upsert(TEMPLATE_IDS + pk_array, pk_array, labels, TEMPLATE, templates)
            members = np.asarray(counts, dtype=np.int64)
            self._upsert(SUM_IDS + pk_array, pk_array, labels, SUM, summed, members)

    def remove_samples(self, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples([int(s) for s in sample_ids])

    def _remove_samples(self, ids: list[int]) -> None:
        if self._writes() and ids:
            # Their subjects as the collection has them: this process's map may not have
            # met a sample another replica enrolled a moment ago.
            fields = ["subject_pk", "vector"] if self.scoring == "mean" else ["subject_pk"]
            held = self._get(ids, fields)
            if held:
                self._delete(sorted(held))
                removed = np.asarray(sorted(held), dtype=np.int64)
                pks = np.asarray([held[i]["subject_pk"] for i in removed.tolist()], np.int64)
                if self.scoring == "mean":
                    vectors = np.asarray([held[i]["vector"] for i in removed.tolist()])
                    self._change_sums(pks, vectors, -1)
                self._update_digest(samples_digest(removed, pks))
        for sample_id in ids:
            pk = self._sample_subject.pop(sample_id, None)
            if pk is not None:
                self._subject_samples[pk].discard(sample_id)

    def remove_subject(self, pk: int, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples([int(s) for s in sample_ids])
            name = self._subject_names.pop(pk, None)
            if name is not None:
                self._subject_pks.pop(name, None)
            self._subject_samples.pop(pk, None)
            if self.scoring == "mean" and self._writes():
                self._delete([TEMPLATE_IDS + pk, SUM_IDS + pk])

    # -- the digest --
    def _held_digest(self) -> int | None:
        row = self._get([DIGEST_ID], ["subject_pk"]).get(DIGEST_ID)
        return None if row is None else int(row["subject_pk"])

    def _write_digest(self, digest: int) -> None:
        """The digest row: the samples' digest, and the index the collection was built with."""
        zero = np.zeros((1, self.dim), dtype=np.float32)
        ids, values = np.array([DIGEST_ID]), np.array([digest], dtype=np.int64)
        self._upsert(ids, values, [self._milvus.config.signature], DIGEST, zero)

    def _update_digest(self, change: int) -> None:
        """Fold a writer's own additions or removals into the collection's digest, written
        last: a writer that stops before it leaves the digest behind the samples, and the
        next start checks the collection row by row. No digest: none is made here."""
        held = self._held_digest()
        if held is not None:
            self._write_digest(held ^ change)

    # -- building --
    def _remember(self, contents: IndexContents) -> None:
        """This process's map of which sample is whose, from the database's contents."""
        subjects = contents.subjects
        self._subject_names = dict(subjects)
        self._subject_pks = {name: pk for pk, name in subjects.items()}
        self._subject_samples = {pk: set() for pk in subjects}
        ids = np.asarray(contents.sample_ids, dtype=np.int64).tolist()
        pks = np.asarray(contents.subject_pks, dtype=np.int64).tolist()
        self._sample_subject = dict(zip(ids, pks, strict=True))
        for sample_id, pk in self._sample_subject.items():
            self._subject_samples.setdefault(pk, set()).add(sample_id)

    def _expected_templates(
        self, contents: IndexContents
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(subject pks, templates, sums, sample counts) a "mean" collection holds for
        `contents`."""
        sample_ids = np.asarray(contents.sample_ids, dtype=np.int64)
        subject_pks = np.asarray(contents.subject_pks, dtype=np.int64)
        if self.scoring != "mean" or not len(sample_ids):
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return np.zeros(0, dtype=np.int64), empty, empty, np.zeros(0, dtype=np.int64)
        vectors = np.asarray(contents.vectors, dtype=np.float32).reshape(-1, self.dim)
        # Each subject's samples summed in sample id order, as the FAISS backend sums them.
        order = np.lexsort((sample_ids, subject_pks))
        groups = np.split(order, np.flatnonzero(np.diff(subject_pks[order])) + 1)
        pks = np.asarray([int(subject_pks[group[0]]) for group in groups], dtype=np.int64)
        sums = np.stack([vectors[group].sum(axis=0) for group in groups])
        counts = np.asarray([len(group) for group in groups], dtype=np.int64)
        return pks, np.stack([_template(total) for total in sums]), sums, counts

    def _names(self, contents: IndexContents, pks: np.ndarray) -> list[str]:
        return [contents.subjects.get(pk, str(pk)) for pk in pks.tolist()]

    def _load(self, contents: IndexContents) -> None:
        """Fill a fresh collection from the database's contents."""
        self._remember(contents)
        sample_ids = np.asarray(contents.sample_ids, dtype=np.int64)
        subject_pks = np.asarray(contents.subject_pks, dtype=np.int64)
        vectors = np.asarray(contents.vectors, dtype=np.float32).reshape(-1, self.dim)
        self._upsert(sample_ids, subject_pks, self._names(contents, subject_pks), SAMPLE, vectors)
        pks, templates, sums, counts = self._expected_templates(contents)
        if len(pks):
            names = self._names(contents, pks)
            self._upsert(TEMPLATE_IDS + pks, pks, names, TEMPLATE, templates)
            self._upsert(SUM_IDS + pks, pks, names, SUM, sums, counts)
        self._write_digest(samples_digest(sample_ids, subject_pks))

    def _reconcile(self, contents: IndexContents, held_digest: int | None) -> None:
        """Make an existing collection hold exactly `contents` (the database's, read under the
        collection's mutex). Its digest equal to the contents': nothing to do ("reused");
        otherwise the database's rows are looked up by id (subjects, not sample vectors) and
        the collection's counted, ids scanned only when it holds rows the database has not,
        and only the rows that differ are written or deleted ("repaired"; "reused" if none
        did). A sample's vector never changes under its id: samples are compared by id and
        subject, templates by value."""
        self._remember(contents)
        sample_ids = np.asarray(contents.sample_ids, dtype=np.int64)
        subject_pks = np.asarray(contents.subject_pks, dtype=np.int64)
        digest = samples_digest(sample_ids, subject_pks)
        if held_digest == digest:  # every writer finished: its samples are the database's
            self.opened = "reused"
            return
        pks, templates, sums, counts = self._expected_templates(contents)
        # Looked up by id (cheap), and counted: only rows beyond those found need a scan.
        held = self._get(sample_ids.tolist(), ["subject_pk"])
        wrong = [
            i
            for i, pair in enumerate(zip(sample_ids.tolist(), subject_pks.tolist(), strict=True))
            if pair[0] not in held or int(held[pair[0]]["subject_pk"]) != pair[1]
        ]
        template_ids = (TEMPLATE_IDS + pks).tolist()
        sum_ids = (SUM_IDS + pks).tolist()
        templates_held = self._get(template_ids, ["vector", "subject_pk"])
        sums_held = self._get(sum_ids, ["vector", "members"])
        stale = [
            i
            for i, (template_id, sum_id) in enumerate(zip(template_ids, sum_ids, strict=True))
            if template_id not in templates_held
            or sum_id not in sums_held
            or int(templates_held[template_id]["subject_pk"]) != int(pks[i])
            or not np.allclose(templates_held[template_id]["vector"], templates[i], atol=1e-6)
            or int(sums_held[sum_id]["members"]) != int(counts[i])
            or not np.allclose(sums_held[sum_id]["vector"], sums[i], rtol=1e-5, atol=1e-5)
        ]
        extra: list[int] = []
        if (
            self._count(SAMPLE) > len(held)
            or self._count(TEMPLATE) > len(templates_held)
            or self._count(SUM) > len(sums_held)
        ):
            wanted = set(sample_ids.tolist()) | set(template_ids) | set(sum_ids)
            rows = self._scan(f"kind in [{SAMPLE}, {TEMPLATE}, {SUM}]", ["kind"])
            extra = sorted(int(row["id"]) for row in rows if int(row["id"]) not in wanted)
        self.opened = "repaired" if wrong or stale or extra else "reused"
        if extra:
            self._delete(extra)
        if wrong:
            vectors = np.asarray(contents.vectors, dtype=np.float32).reshape(-1, self.dim)
            self._upsert(
                sample_ids[wrong],
                subject_pks[wrong],
                self._names(contents, subject_pks[wrong]),
                SAMPLE,
                vectors[wrong],
            )
        if stale:
            names = self._names(contents, pks[stale])
            self._upsert(TEMPLATE_IDS + pks[stale], pks[stale], names, TEMPLATE, templates[stale])
            self._upsert(SUM_IDS + pks[stale], pks[stale], names, SUM, sums[stale], counts[stale])
        self._write_digest(digest)


def lock_name(collection: str) -> str:
    """The name of a collection's mutex in the database (`Store.exclusive`)."""
    return f"milvus collection {collection}"


class MilvusBackend:
    """`milvus://host:port`: each gallery's index in a collection of a Milvus server."""

    name = "milvus"

    def __init__(self, url: str) -> None:
        self.config = MilvusConfig(url)
        self.connection = MilvusConnection(self.config)
        self._exclusive: Exclusive | None = None

    def coordinate(self, exclusive: Exclusive) -> None:
        """Share the collections with every process on the database whose mutex is
        `exclusive`: each collection then has one writer at a time (see the module's doc)."""
        self._exclusive = exclusive

    def building(self, gallery: str, model_id: str) -> AbstractContextManager[None]:
        """Held by the caller while it reads the gallery's contents from the database and
        builds from them: no write reaches the collection in between."""
        if self._exclusive is None:
            return nullcontext()
        return self._exclusive(lock_name(self.config.collection_name(gallery, model_id)))

    def build(
        self,
        dim: int,
        scoring: str,
        contents: IndexContents,
        *,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> MilvusSubjectIndex:
        """The index of `contents`. Named by `gallery` and `model_id`, the collection of that
        pair: reused or repaired when the server has it, else made; unnamed, a new one."""
        collection = self.config.collection_name(gallery, model_id)
        named = gallery is not None and model_id is not None
        index = MilvusSubjectIndex(
            self.connection, collection, dim, scoring, self._exclusive if named else None
        )
        reusable, digest = index._reusable() if named else (False, None)
        if reusable:
            index._reconcile(contents, digest)
        else:
            index._create()
            index._load(contents)
        return index

    def ping(self, timeout: float) -> None:
        """IndexUnavailable if the server does not answer within `timeout` seconds."""
        self.connection.call(self.connection.client.list_collections, timeout=timeout)

    def close(self) -> None:
        self.connection.client.close()
