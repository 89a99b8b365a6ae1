"""Subject search in a Milvus server (`milvus://host:port`): galleries larger than one machine.

One collection per gallery and model, holding the gallery's samples (`kind` 0, id = sample id)
and, for "mean" galleries, one template per subject (`kind` 1, id = TEMPLATE_IDS + subject pk):
the L2-normalised sum of its samples, as the FAISS backend computes it. The process holds no
vectors: only which samples belong to which subject (integers), for subject-level answers.

- "max": a search widens until it has `top_k` distinct subjects (exact: a subject's best
  sample is met before any of its others), as FAISS does; past Milvus's largest `limit` it
  asks Milvus to group by subject instead.
- "mean": a search of the templates.

Exact search (a FLAT index, inner product) by default; `?index=HNSW&M=16&efConstruction=200&ef=64`
chooses another index type with its build parameters and search parameters (`ef`, `nprobe`,
`search_list` are search parameters, every other key a build parameter). `?prefix=NAME` names
the collections (default `opengallery`), `?db=NAME` the Milvus database, `?secure=true` uses
TLS; `milvus://user:password@host:port` authenticates.

A build writes the collection afresh from the database (the source of truth), then the index
follows every committed change. Milvus errors surface as IndexUnavailable, naming the server
without its credentials.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
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
SAMPLE, TEMPLATE = 0, 1
MAX_LIMIT = 16384  # Milvus's largest `limit` (top-k) and query window
INSERT_BATCH = 4096  # rows per insert call (gRPC messages stay well under their 64 MiB cap)
SEARCH_KEYS = {"ef", "nprobe", "search_list"}
OWN_KEYS = {"index", "prefix", "db", "secure", "timeout"}

T = TypeVar("T")


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
        self, connection: MilvusConnection, collection: str, dim: int, scoring: str
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.scoring = check_scoring(scoring)
        self.collection = collection
        self._milvus = connection
        self._client = connection.client
        self._lock = RWLock()
        self._sample_subject: dict[int, int] = {}
        self._subject_samples: dict[int, set[int]] = {}
        self._subject_names: dict[int, str] = {}
        self._subject_pks: dict[str, int] = {}

    # -- the collection --
    def _create(self) -> None:
        config = self._milvus.config
        client = self._client
        if self._milvus.call(client.has_collection, self.collection):
            self._milvus.call(client.drop_collection, self.collection)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("subject_pk", DataType.INT64)
        schema.add_field("kind", DataType.INT8)
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

    def drop(self) -> None:
        """Remove the collection from the server (a gallery deleted, a model retired)."""
        self._milvus.call(self._client.drop_collection, self.collection)

    def _insert(self, ids: np.ndarray, pks: np.ndarray, kind: int, vectors: np.ndarray) -> None:
        for start in range(0, len(ids), INSERT_BATCH):
            rows = [
                {"id": int(i), "subject_pk": int(pk), "kind": kind, "vector": vector}
                for i, pk, vector in zip(
                    ids[start : start + INSERT_BATCH].tolist(),
                    pks[start : start + INSERT_BATCH].tolist(),
                    vectors[start : start + INSERT_BATCH].tolist(),
                    strict=True,
                )
            ]
            self._milvus.call(self._client.insert, self.collection, rows)

    def _delete(self, ids: list[int]) -> None:
        for chunk in _chunks(ids, MAX_LIMIT):
            self._milvus.call(self._client.delete, self.collection, ids=chunk)

    def _fetch_vectors(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of `ids`, in that order."""
        found: dict[int, list[float]] = {}
        for chunk in _chunks(ids, MAX_LIMIT):
            rows = self._milvus.read(
                self.collection,
                self._client.get,
                self.collection,
                ids=chunk,
                output_fields=["vector"],
            )
            found.update({int(row["id"]): row["vector"] for row in rows})
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray([found[i] for i in ids], dtype=np.float32)

    def _search(
        self, queries: np.ndarray, limit: int, kind: int, group: bool = False
    ) -> list[list[tuple[int, int, float]]]:
        """Per query, (id, subject pk, score) best first."""
        extra: dict[str, Any] = {"group_by_field": "subject_pk"} if group else {}
        results = self._milvus.read(
            self.collection,
            self._client.search,
            self.collection,
            data=np.ascontiguousarray(queries, dtype=np.float32).tolist(),
            limit=limit,
            filter=f"kind == {kind}",
            output_fields=["subject_pk"],
            search_params={"metric_type": "IP", "params": self._milvus.config.search_params},
            **extra,
        )
        return [
            [
                (int(hit["id"]), int(hit["entity"]["subject_pk"]), float(hit["distance"]))
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
                [Candidate(self._subject_names[pk], score) for pk, score in row]
                for row in self._search_pks(queries, top_k)
            ]

    def _searchable(self) -> int:
        return len(self._sample_subject) if self.scoring == "max" else self._templates()

    def _templates(self) -> int:
        return sum(1 for members in self._subject_samples.values() if members)

    def _search_pks(self, queries: np.ndarray, top_k: int) -> list[list[tuple[int, float]]]:
        total = self._searchable()
        if total == 0 or top_k <= 0 or not len(queries):
            return [[] for _ in range(len(queries))]
        if self.scoring == "mean":
            hits = self._search(queries, min(top_k, total, MAX_LIMIT), TEMPLATE)
            return [[(pk, score) for _, pk, score in row] for row in hits]
        k = min(total, max(2 * top_k, top_k + 8), MAX_LIMIT)
        while True:
            hits = self._search(queries, k, SAMPLE)
            rows: list[list[tuple[int, float]]] = []
            for row in hits:
                found = distinct_subjects(((pk, score) for _, pk, score in row), top_k)
                if len(found) < top_k and k < total:
                    break
                rows.append(found)
            else:
                return rows
            if k == MAX_LIMIT:  # Milvus cannot widen further: it groups by subject itself
                hits = self._search(queries, min(top_k, MAX_LIMIT), SAMPLE, group=True)
                return [[(pk, score) for _, pk, score in row] for row in hits]
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
        with self._lock.read():
            pk = self._subject_pks.get(subject_id)
            if pk is None or not self._subject_samples.get(pk):
                return None
            if self.scoring == "mean":
                template = self._fetch_vectors([TEMPLATE_IDS + pk])[0]
                return (queries @ template).astype(np.float64)
            vectors = self._fetch_vectors(sorted(self._subject_samples[pk]))
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
        with self._lock.write():
            self._subject_names[pk] = subject_id
            self._subject_pks[subject_id] = pk
            members = self._subject_samples.setdefault(pk, set())
            ids = np.asarray(sample_ids, dtype=np.int64)
            fresh = [i for i, sid in enumerate(ids.tolist()) if sid not in self._sample_subject]
            if not fresh:
                return
            ids = ids[fresh]
            vectors = self._check(np.asarray(vectors, dtype=np.float32)[fresh])
            self._insert(ids, np.full(len(ids), pk, dtype=np.int64), SAMPLE, vectors)
            for sample_id in ids.tolist():
                self._sample_subject[sample_id] = pk
                members.add(sample_id)
            if self.scoring == "mean":
                self._refresh_templates({pk})

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
            self._insert(ids[fresh], pks[fresh], SAMPLE, self._check(np.asarray(vectors)[fresh]))
            for i in fresh:
                self._sample_subject[int(ids[i])] = int(pks[i])
                self._subject_samples[int(pks[i])].add(int(ids[i]))
            if self.scoring == "mean":
                self._refresh_templates({int(pks[i]) for i in fresh})

    def _refresh_templates(self, pks: set[int]) -> None:
        """Recompute the templates of `pks` from their samples as stored (by sample id)."""
        self._delete([TEMPLATE_IDS + pk for pk in sorted(pks)])
        live = [pk for pk in sorted(pks) if self._subject_samples.get(pk)]
        templates = [
            _template(self._fetch_vectors(sorted(self._subject_samples[pk])).sum(axis=0))
            for pk in live
        ]
        if live:
            pk_array = np.asarray(live, dtype=np.int64)
            self._insert(TEMPLATE_IDS + pk_array, pk_array, TEMPLATE, np.stack(templates))

    def remove_samples(self, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples(sample_ids)

    def _remove_samples(self, sample_ids: np.ndarray) -> None:
        present = [int(s) for s in sample_ids if int(s) in self._sample_subject]
        if not present:
            return
        self._delete(present)
        touched: set[int] = set()
        for sample_id in present:
            pk = self._sample_subject.pop(sample_id)
            self._subject_samples[pk].discard(sample_id)
            touched.add(pk)
        if self.scoring == "mean":
            self._refresh_templates(touched)

    def remove_subject(self, pk: int, sample_ids: np.ndarray) -> None:
        with self._lock.write():
            self._remove_samples(sample_ids)
            name = self._subject_names.pop(pk, None)
            if name is not None:
                self._subject_pks.pop(name, None)
            self._subject_samples.pop(pk, None)
            if self.scoring == "mean":
                self._delete([TEMPLATE_IDS + pk])

    def _load(self, contents: IndexContents) -> None:
        """Fill a fresh collection from the database's contents."""
        subjects = contents.subjects
        self._subject_names = dict(subjects)
        self._subject_pks = {name: pk for pk, name in subjects.items()}
        self._subject_samples = {pk: set() for pk in subjects}
        sample_ids = np.asarray(contents.sample_ids, dtype=np.int64)
        subject_pks = np.asarray(contents.subject_pks, dtype=np.int64)
        vectors = np.asarray(contents.vectors, dtype=np.float32).reshape(-1, self.dim)
        self._insert(sample_ids, subject_pks, SAMPLE, vectors)
        self._sample_subject = dict(zip(sample_ids.tolist(), subject_pks.tolist(), strict=True))
        for sample_id, pk in self._sample_subject.items():
            self._subject_samples.setdefault(pk, set()).add(sample_id)
        if self.scoring == "mean" and len(sample_ids):
            # Each subject's samples summed in sample id order, as the FAISS backend sums them.
            order = np.lexsort((sample_ids, subject_pks))
            boundaries = np.flatnonzero(np.diff(subject_pks[order])) + 1
            groups = np.split(order, boundaries)
            pks = np.asarray([int(subject_pks[group[0]]) for group in groups], dtype=np.int64)
            templates = np.stack([_template(vectors[group].sum(axis=0)) for group in groups])
            self._insert(TEMPLATE_IDS + pks, pks, TEMPLATE, templates)


class MilvusBackend:
    """`milvus://host:port`: each gallery's index in a collection of a Milvus server."""

    name = "milvus"

    def __init__(self, url: str) -> None:
        self.config = MilvusConfig(url)
        self.connection = MilvusConnection(self.config)

    def build(
        self,
        dim: int,
        scoring: str,
        contents: IndexContents,
        *,
        gallery: str | None = None,
        model_id: str | None = None,
    ) -> MilvusSubjectIndex:
        collection = self.config.collection_name(gallery, model_id)
        index = MilvusSubjectIndex(self.connection, collection, dim, scoring)
        index._create()
        index._load(contents)
        return index

    def ping(self, timeout: float) -> None:
        """IndexUnavailable if the server does not answer within `timeout` seconds."""
        self.connection.call(self.connection.client.list_collections, timeout=timeout)

    def close(self) -> None:
        self.connection.client.close()
