"""What Client and AsyncClient share: every request described once, and the conventions.

Each operation is a `Call`: method, quoted path, body, whether it is safe to send twice, and
how to read the answer. The two clients differ only in how they send a Call (blocking or
awaited) and how they wait between attempts; building requests, deciding whether to retry,
and turning answers into results or `OpenGalleryError` happen here.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from opengallery.client.errors import (
    CONNECTION_ERROR,
    HTTP_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    OpenGalleryError,
)
from opengallery.client.types import (
    BulkEnrolment,
    Calibration,
    CalibrationSamplePage,
    CalibrationUpload,
    CreatedKey,
    Enrolment,
    Gallery,
    Health,
    Identification,
    Job,
    KeyInfo,
    ModelInfo,
    Readiness,
    Subject,
    SubjectPage,
    Verification,
)

T = TypeVar("T")

# Answers that say "try again later": rate limited, or a gateway/service momentarily unable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

# An image to upload: a path, its bytes, or an open binary file.
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
# An embedding: a sequence of floats (a list, or a 1-d numpy array).
Embedding = Sequence[float]

FilePart = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    read: Callable[[Any], T]  # from the decoded JSON body (None for an empty body)
    json: Any = None
    data: dict[str, str] | None = None  # multipart form fields
    files: list[FilePart] | None = None  # multipart files, as bytes (so a retry can resend them)
    params: dict[str, str | int] | None = None
    # Safe to send again when an attempt may have reached the server: the request changes
    # nothing, or changing it twice is the same as once.
    repeatable: bool = True
    # Statuses outside 2xx that are answers rather than errors (GET /readyz's 503).
    answers: frozenset[int] = frozenset()
    # The result has a `new` field: True when the answer was 201 (created), False on 200.
    created_flag: bool = False

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.data is not None:
            kwargs["data"] = self.data
        if self.files is not None:
            kwargs["files"] = self.files
        if self.params is not None:
            kwargs["params"] = self.params
        return kwargs


def path(*segments: str | int) -> str:
    """An API path; every segment is percent-encoded, `/`, `%`, `?`, `#` and spaces included."""
    return "/" + "/".join(quote(str(segment), safe="") for segment in segments)


# -- inputs --
def image_part(field: str, image: ImageInput, index: int) -> FilePart:
    """A multipart file part holding the image's bytes, read once."""
    if isinstance(image, bytes | bytearray | memoryview):
        return field, (f"image{index}", bytes(image), "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        file = Path(image)
        return field, (file.name, file.read_bytes(), "application/octet-stream")
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("open image files in binary mode ('rb')")
        name = os.path.basename(str(getattr(image, "name", "") or "")) or f"image{index}"
        return field, (name, data, "application/octet-stream")
    raise TypeError(f"an image is a path, bytes or a binary file, not {type(image).__name__}")


def image_parts(field: str, images: Sequence[ImageInput]) -> list[FilePart]:
    # A path string or bytes is a sequence too: one image passed as `images` is a mistake.
    if isinstance(images, str | os.PathLike | bytes | bytearray | memoryview) or hasattr(
        images, "read"
    ):
        raise TypeError("images is a list (of paths, bytes or binary files), not one image")
    return [image_part(field, image, index) for index, image in enumerate(images)]


def vector(embedding: Embedding) -> list[float]:
    values = embedding.tolist() if hasattr(embedding, "tolist") else embedding
    return [float(value) for value in values]


def vectors(embeddings: Sequence[Embedding]) -> list[list[float]]:
    if hasattr(embeddings, "tolist"):
        embeddings = embeddings.tolist()
    return [vector(embedding) for embedding in embeddings]


def neither_or_both(first: str, second: str) -> ValueError:
    return ValueError(f"give exactly one of {first} or {second}")


def options(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# -- readers --
def _ignore(_: Any) -> None:
    return None


# -- the operations --
def create_gallery(
    name: str,
    fpir: float | None,
    model: str | None,
    scoring: str | None,
    keep_images: bool | None,
) -> Call[Gallery]:
    body = {"name": name} | options(
        fpir=fpir, model=model, scoring=scoring, keep_images=keep_images
    )
    # A lost answer cannot be told from a name taken by someone else: never repeated.
    return Call("POST", path("v1", "galleries"), Gallery.from_json, json=body, repeatable=False)


def get_gallery(gallery: str) -> Call[Gallery]:
    return Call("GET", path("v1", "galleries", gallery), Gallery.from_json)


def list_galleries() -> Call[list[Gallery]]:
    return Call(
        "GET",
        path("v1", "galleries"),
        lambda body: [Gallery.from_json(item) for item in body["galleries"]],
    )


def delete_gallery(gallery: str) -> Call[None]:
    return Call("DELETE", path("v1", "galleries", gallery), _ignore)


def put_subject(gallery: str, subject_id: str, metadata: Mapping[str, Any] | None) -> Call[Subject]:
    return Call(
        "PUT",
        path("v1", "galleries", gallery, "subjects", subject_id),
        Subject.from_json,
        json=None if metadata is None else {"metadata": dict(metadata)},
        created_flag=True,
    )


def get_subject(gallery: str, subject_id: str) -> Call[Subject]:
    return Call("GET", path("v1", "galleries", gallery, "subjects", subject_id), Subject.from_json)


def list_subjects(gallery: str, limit: int | None, cursor: str | None) -> Call[SubjectPage]:
    params: dict[str, str | int] = options(limit=limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Call(
        "GET",
        path("v1", "galleries", gallery, "subjects"),
        SubjectPage.from_json,
        params=params or None,
    )


def delete_subject(gallery: str, subject_id: str) -> Call[None]:
    return Call("DELETE", path("v1", "galleries", gallery, "subjects", subject_id), _ignore)


def enroll(
    gallery: str,
    subject_id: str,
    images: Sequence[ImageInput] | None,
    embeddings: Sequence[Embedding] | None,
) -> Call[Enrolment]:
    url = path("v1", "galleries", gallery, "subjects", subject_id, "samples")
    # The server answers content it already holds for the subject with the existing sample,
    # so sending the same request twice enrols once: repeatable.
    if images is not None and embeddings is None:
        return Call("POST", url, Enrolment.from_json, files=image_parts("images", images))
    if embeddings is not None and images is None:
        return Call("POST", url, Enrolment.from_json, json={"embeddings": vectors(embeddings)})
    raise neither_or_both("images", "embeddings")


@dataclass(frozen=True)
class BulkItem:
    """One sample of a bulk enrolment: a subject id with an image or an embedding."""

    subject_id: str
    image: ImageInput | None = None
    embedding: Embedding | None = None

    def to_json(self) -> dict[str, Any]:
        if (self.image is None) == (self.embedding is None):
            raise neither_or_both("image", "embedding")
        if self.embedding is not None:
            return {"subject_id": self.subject_id, "embedding": vector(self.embedding)}
        data = image_part("image", self.image, 0)[1][1]  # type: ignore[arg-type]
        return {"subject_id": self.subject_id, "image": base64.b64encode(data).decode("ascii")}


def enroll_many(
    gallery: str, items: Sequence[BulkItem], create_subjects: bool
) -> Call[BulkEnrolment]:
    # Content a subject already holds is answered with the existing sample: repeatable.
    body = {"items": [item.to_json() for item in items], "create_subjects": create_subjects}
    return Call(
        "POST", path("v1", "galleries", gallery, "samples"), BulkEnrolment.from_json, json=body
    )


def add_calibration_samples(
    gallery: str, images: Sequence[ImageInput] | None, embeddings: Sequence[Embedding] | None
) -> Call[CalibrationUpload]:
    url = path("v1", "galleries", gallery, "calibration", "samples")
    # Content the set already holds is not added again: repeatable.
    if images is not None and embeddings is None:
        return Call("POST", url, CalibrationUpload.from_json, files=image_parts("images", images))
    if embeddings is not None and images is None:
        body = {"embeddings": vectors(embeddings)}
        return Call("POST", url, CalibrationUpload.from_json, json=body)
    raise neither_or_both("images", "embeddings")


def list_calibration_samples(
    gallery: str, limit: int | None, cursor: str | None
) -> Call[CalibrationSamplePage]:
    params: dict[str, str | int] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = cursor
    url = path("v1", "galleries", gallery, "calibration", "samples")
    return Call("GET", url, CalibrationSamplePage.from_json, params=params)


def get_calibration(gallery: str, scores: bool) -> Call[Calibration]:
    params: dict[str, str | int] = {"scores": "true"} if scores else {}
    url = path("v1", "galleries", gallery, "calibration")
    return Call("GET", url, Calibration.from_json, params=params)


def delete_calibration(gallery: str) -> Call[Calibration]:
    return Call("DELETE", path("v1", "galleries", gallery, "calibration"), Calibration.from_json)


def delete_sample(gallery: str, subject_id: str, sample_id: int) -> Call[None]:
    url = path("v1", "galleries", gallery, "subjects", subject_id, "samples", sample_id)
    return Call("DELETE", url, _ignore)


def identify(
    gallery: str,
    images: Sequence[ImageInput] | None,
    embeddings: Sequence[Embedding] | None,
    top_k: int | None,
    fpir: float | None,
    threshold: float | None,
) -> Call[Identification]:
    url = path("v1", "galleries", gallery, "identify")
    settings = options(top_k=top_k, fpir=fpir, threshold=threshold)
    # Identify changes nothing: repeatable.
    if images is not None and embeddings is None:
        form = {name: str(value) for name, value in settings.items()}
        files = image_parts("images", images)
        return Call("POST", url, Identification.from_json, data=form, files=files)
    if embeddings is not None and images is None:
        body = {"embeddings": vectors(embeddings)} | settings
        return Call("POST", url, Identification.from_json, json=body)
    raise neither_or_both("images", "embeddings")


def verify(
    gallery: str,
    subject_id: str,
    image: ImageInput | None,
    embedding: Embedding | None,
    fpir: float | None,
    threshold: float | None,
) -> Call[Verification]:
    url = path("v1", "galleries", gallery, "verify")
    settings = options(fpir=fpir, threshold=threshold)
    if image is not None and embedding is None:
        form = {"subject_id": subject_id} | {name: str(value) for name, value in settings.items()}
        files = [image_part("image", image, 0)]
        return Call("POST", url, Verification.from_json, data=form, files=files)
    if embedding is not None and image is None:
        body = {"subject_id": subject_id, "embedding": vector(embedding)} | settings
        return Call("POST", url, Verification.from_json, json=body)
    raise neither_or_both("image", "embedding")


def export_gallery(gallery: str) -> Call[None]:
    """The export request; the clients stream its body to a file instead of reading JSON."""
    return Call("GET", path("v1", "galleries", gallery, "export"), _ignore)


def import_gallery(archive: ImageInput, name: str | None) -> Call[Gallery]:
    _, (filename, data, _) = image_part("archive", archive, 0)
    # A lost answer cannot be told from a name taken by someone else: never repeated.
    return Call(
        "POST",
        path("v1", "galleries", "import"),
        Gallery.from_json,
        files=[("archive", (filename, data, "application/x-tar"))],
        params=None if name is None else {"name": name},
        repeatable=False,
    )


def partial_path(destination: str | os.PathLike[str]) -> Path:
    """Where a download goes until it is complete (then renamed over `destination`)."""
    target = Path(destination)
    return target.with_name(target.name + ".part")


def list_models() -> Call[list[ModelInfo]]:
    return Call(
        "GET", path("v1", "models"), lambda body: [ModelInfo.from_json(m) for m in body["models"]]
    )


def register_model(server_path: str | os.PathLike[str]) -> Call[str]:
    # Sent again after a lost answer it would be a 409 for a bundle that was registered: the
    # caller checks with list_models instead.
    return Call(
        "POST",
        path("v1", "models"),
        lambda body: str(body["model"]),
        json={"path": os.fspath(server_path)},
        repeatable=False,
    )


def migrate(gallery: str, model: str) -> Call[str]:
    # A second start of the same migration is a 409: never repeated.
    return Call(
        "POST",
        path("v1", "galleries", gallery, "migrate"),
        lambda body: str(body["job_id"]),
        json={"model": model},
        repeatable=False,
    )


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", path("v1", "jobs", job_id), Job.from_json)


def create_key(scope: str, name: str | None) -> Call[CreatedKey]:
    body: dict[str, Any] = {"scope": scope}
    if name is not None:
        body["name"] = name
    return Call("POST", path("v1", "keys"), CreatedKey.from_json, json=body, repeatable=False)


def list_keys() -> Call[list[KeyInfo]]:
    return Call(
        "GET", path("v1", "keys"), lambda body: [KeyInfo.from_json(key) for key in body["keys"]]
    )


def revoke_key(key_id: int | str) -> Call[None]:
    return Call("DELETE", path("v1", "keys", key_id), _ignore)


def health() -> Call[Health]:
    return Call("GET", path("healthz"), Health.from_json)


def ready() -> Call[Readiness]:
    return Call("GET", path("readyz"), Readiness.from_json, answers=frozenset({503}))


# -- answers and errors --
def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def error_from_response(call: Call[Any], response: httpx.Response) -> OpenGalleryError:
    try:
        error = response.json()["error"]
        details = error.get("details")
        return OpenGalleryError(
            str(error["message"]),
            code=str(error["code"]),
            status=response.status_code,
            details=details if isinstance(details, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        text = " ".join(response.text.split())[:200] or "no body"
        return OpenGalleryError(
            f"{call.method} {response.request.url} answered {response.status_code} "
            f"{response.reason_phrase}: {text}",
            code=HTTP_ERROR,
            status=response.status_code,
        )


def error_from_transport(
    call: Call[Any], base_url: str, error: httpx.TransportError
) -> OpenGalleryError:
    url = f"{base_url}{call.path}"
    if isinstance(error, httpx.TimeoutException):
        return OpenGalleryError(
            f"no answer from {url} within the timeout ({type(error).__name__})", code=TIMEOUT
        )
    reason = str(error) or type(error).__name__
    return OpenGalleryError(f"cannot reach the service at {url}: {reason}", code=CONNECTION_ERROR)


def read_answer(call: Call[T], response: httpx.Response) -> T:
    if not (response.is_success or response.status_code in call.answers):
        raise error_from_response(call, response)
    try:
        body = response.json() if response.content else None
        result = call.read(body)
        if call.created_flag:
            result = dataclasses.replace(result, new=response.status_code == 201)  # type: ignore[type-var]
        return result
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OpenGalleryError(
            f"{call.method} {response.request.url} answered {response.status_code} with a body "
            f"the client cannot read ({type(error).__name__}: {error})",
            code=INVALID_RESPONSE,
            status=response.status_code,
        ) from None


def job_deadline_passed(job: Job, deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise OpenGalleryError(
            f"job {job.job_id} is still {job.status} after {timeout} s "
            f"({job.progress.done}/{job.progress.total} done)",
            code=TIMEOUT,
        )


def service_url(url: str) -> str:
    """The base URL without its trailing `/`; ValueError unless it is http(s)://HOST[...].

    Checked before any request: without a scheme ("localhost:8000") httpx would fail later
    with an error about an unsupported protocol that does not name the URL given.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in {"http", "https"} or not rest.strip("/"):
        raise ValueError(
            f"the service URL must start with http:// or https:// and name a host, "
            f"got {url!r} (e.g. http://127.0.0.1:8000)"
        )
    return url.rstrip("/")


class ClientBase:
    """The conventions: base URL, key header, timeouts, and when to send a request again."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")
        self.url = service_url(url)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._timeout = timeout
        self._headers = {"X-API-Key": api_key} if api_key else {}

    def _delay(self, attempt: int, server_says: float | None = None) -> float:
        """Exponential backoff (backoff, 2*backoff, 4*backoff...) or the server's Retry-After,
        never more than max_backoff."""
        wanted = self.backoff * 2**attempt if server_says is None else server_says
        return min(wanted, self.max_backoff)

    def _retry_after_error(
        self, call: Call[Any], attempt: int, error: httpx.TransportError
    ) -> float | None:
        """Seconds to wait before sending again after a transport error, or None to give up."""
        if attempt >= self.retries:
            return None
        # A connection that was never made carried nothing: any request may go again.
        never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        return self._delay(attempt) if call.repeatable or never_sent else None

    def _retry_after_response(
        self, call: Call[Any], attempt: int, response: httpx.Response
    ) -> float | None:
        status = response.status_code
        if attempt >= self.retries or status in call.answers or status not in RETRY_STATUSES:
            return None
        return self._delay(attempt, retry_after(response)) if call.repeatable else None
