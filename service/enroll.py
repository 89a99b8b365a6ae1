"""`opengallery enroll`: batch-enrol a folder `DIR/<subject_id>/*.png|jpg` over HTTP.

Concurrent (a thread pool, one subject per task), with a progress bar, and resumable: each
image's sha256 is compared with the `content_sha256` of the samples the subject already has,
so a rerun sends only what is missing. The server is idempotent on content too, so a request
retried after a lost response never enrols an image twice. Exit status: 0 when every image
is enrolled (now or before), 1 when any was rejected or failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from tqdm import tqdm

from service.core.ids import check_id

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
RETRY_STATUSES = {429, 502, 503, 504}


@dataclass
class Outcome:
    path: Path
    status: str  # "enrolled" | "skipped" | "rejected" | "failed"
    reason: str = ""


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)


class EnrolError(Exception):
    pass


def scan(root: Path) -> tuple[dict[str, list[Path]], list[Outcome]]:
    """Subjects and their image files; folders whose names are not valid ids are reported."""
    subjects: dict[str, list[Path]] = {}
    problems: list[Outcome] = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        files = sorted(
            path
            for path in folder.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            continue
        try:
            check_id(folder.name)
        except ValueError as error:
            problems += [Outcome(path, "failed", f"invalid subject id: {error}") for path in files]
            continue
        subjects[folder.name] = files
    return subjects, problems


class Enroller:
    def __init__(
        self,
        client: httpx.Client,
        gallery: str,
        *,
        batch_size: int,
        retries: int = 3,
    ) -> None:
        self.client = client
        self.gallery = gallery
        self.batch_size = batch_size
        self.retries = retries

    def _url(self, *parts: str) -> str:
        return "/v1/galleries/" + "/".join(quote(part, safe="") for part in (self.gallery, *parts))

    def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = self.client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError as error:
                if attempt == self.retries:
                    raise EnrolError(f"{type(error).__name__}: {error}") from None
            else:
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return response
            time.sleep(0.5 * 2**attempt)  # back off before retrying a transient failure
        raise AssertionError("unreachable")

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        try:
            error = response.json()["error"]
            return f"HTTP {response.status_code} {error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            return f"HTTP {response.status_code}: {response.text[:200]}"

    def check_gallery(self) -> None:
        response = self._request("GET", self._url())
        if response.status_code != 200:
            raise EnrolError(f"gallery {self.gallery!r}: {self._error_text(response)}")

    def enrol_subject(self, subject: str, files: list[Path], progress: tqdm) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            response = self._request("PUT", self._url("subjects", subject))
            if response.status_code not in (200, 201):
                raise EnrolError(self._error_text(response))
            known: set[str] = set()
            if response.status_code == 200:  # an existing subject: what does it hold already?
                detail = self._request("GET", self._url("subjects", subject))
                if detail.status_code != 200:
                    raise EnrolError(self._error_text(detail))
                known = {sample["content_sha256"] for sample in detail.json()["samples"]}
            pending: list[tuple[Path, bytes]] = []
            for path in files:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() in known:
                    outcomes.append(Outcome(path, "skipped", "already enrolled"))
                    progress.update(1)
                else:
                    pending.append((path, data))
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                outcomes += self._post(subject, batch)
                progress.update(len(batch))
        except (EnrolError, OSError) as error:
            done = {outcome.path for outcome in outcomes}
            rest = [path for path in files if path not in done]
            outcomes += [Outcome(path, "failed", str(error)) for path in rest]
            progress.update(len(rest))
        return outcomes

    def _post(self, subject: str, batch: list[tuple[Path, bytes]]) -> list[Outcome]:
        files = [("images", (path.name, data, "application/octet-stream")) for path, data in batch]
        response = self._request("POST", self._url("subjects", subject, "samples"), files=files)
        if response.status_code in (201, 422, 413):
            body = response.json()
            samples = (
                body.get("samples")
                if response.status_code == 201
                else body.get("error", {}).get("details", {}).get("samples")
            )
            if samples is not None and len(samples) == len(batch):
                return [
                    Outcome(path, "enrolled")
                    if sample["status"] == "enrolled"
                    else Outcome(path, "rejected", sample.get("reason") or "rejected")
                    for (path, _), sample in zip(batch, samples, strict=True)
                ]
        reason = self._error_text(response)
        status = "rejected" if 400 <= response.status_code < 500 else "failed"
        return [Outcome(path, status, reason) for path, _ in batch]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery enroll",
        description="Enrol DIR/<subject_id>/*.png|jpg into a gallery over HTTP (resumable).",
    )
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--url", default=os.environ.get("OPENGALLERY_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENGALLERY_API_KEY"),
        help="a client or admin key (default: $OPENGALLERY_API_KEY)",
    )
    parser.add_argument("--gallery", required=True)
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests")
    parser.add_argument("--batch-size", type=int, default=8, help="images per request")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a request after a transient failure"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv))
    prog = "opengallery enroll"
    if not args.api_key:
        print(f"{prog}: no API key: pass --api-key or set OPENGALLERY_API_KEY", file=sys.stderr)
        return 2
    if not args.directory.is_dir():
        print(f"{prog}: {args.directory} is not a directory", file=sys.stderr)
        return 2
    if args.workers < 1 or args.batch_size < 1:
        print(f"{prog}: --workers and --batch-size must be at least 1", file=sys.stderr)
        return 2
    subjects, problems = scan(args.directory)
    total = sum(len(files) for files in subjects.values())
    if not total and not problems:
        print(f"{prog}: no images under {args.directory}/<subject_id>/", file=sys.stderr)
        return 1
    summary = Summary(list(problems))
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
    with httpx.Client(
        base_url=args.url,
        headers={"X-API-Key": args.api_key},
        timeout=args.timeout,
        limits=limits,
    ) as client:
        enroller = Enroller(
            client, args.gallery, batch_size=args.batch_size, retries=max(args.retries, 0)
        )
        try:
            enroller.check_gallery()
        except EnrolError as error:
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
        with (
            tqdm(total=total, unit="image", disable=args.no_progress, file=sys.stderr) as progress,
            ThreadPoolExecutor(max_workers=args.workers) as pool,
        ):
            futures = [
                pool.submit(enroller.enrol_subject, subject, files, progress)
                for subject, files in subjects.items()
            ]
            for future in as_completed(futures):
                summary.outcomes += future.result()
    enrolled, skipped = summary.count("enrolled"), summary.count("skipped")
    rejected, failed = summary.count("rejected"), summary.count("failed")
    print(
        f"{enrolled} enrolled, {skipped} already enrolled, {rejected} rejected, {failed} failed "
        f"({len(subjects)} subjects, gallery {args.gallery!r})"
    )
    for outcome in sorted(summary.outcomes, key=lambda o: str(o.path)):
        if outcome.status in {"rejected", "failed"}:
            print(f"  {outcome.status}: {outcome.path}: {outcome.reason}")
    return 0 if rejected == 0 and failed == 0 else 1
