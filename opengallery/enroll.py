"""`opengallery enroll`: batch-enrol a folder `DIR/<subject_id>/*.png|jpg` over HTTP.

Concurrent (a thread pool, one subject per task), with a progress bar, and resumable: each
image's sha256 is compared with the `content_sha256` of the samples the subject already has,
so a rerun sends only what is missing. The server is idempotent on content too, so a request
retried after a lost response never enrols an image twice. A folder whose name the service
refuses as a subject id has each of its files reported as failed with the service's reason.
Exit status: 0 when every image is enrolled (now or before), 1 when any was rejected or
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from opengallery.client import Client, OpenGalleryError, SampleOutcome

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


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


def image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (and below it when `recursive`), sorted."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path for path in paths if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def scan(root: Path) -> dict[str, list[Path]]:
    """Subjects (folder names, checked by the service) and their image files."""
    subjects: dict[str, list[Path]] = {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        files = image_files(folder)
        if files:
            subjects[folder.name] = files
    return subjects


def split_known(
    files: list[Path], known: set[str], progress: tqdm, already: str
) -> tuple[list[Outcome], list[tuple[Path, bytes]]]:
    """Files whose sha256 the service already holds ("skipped", with reason `already`), and
    the others with their bytes, to send: what makes a rerun resume."""
    skipped: list[Outcome] = []
    pending: list[tuple[Path, bytes]] = []
    for path in files:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() in known:
            skipped.append(Outcome(path, "skipped", already))
            progress.update(1)
        else:
            pending.append((path, data))
    return skipped, pending


def batch_outcomes(
    batch: list[tuple[Path, bytes]],
    send: Callable[[list[bytes]], Sequence[Any]],
    parse: Callable[[Any], Any],
    done: str,
) -> list[Outcome]:
    """Send one batch of images; one Outcome per file: `done` or "rejected" with the service's
    reason, or "failed". `send` returns one outcome per image (each with `status` and `reason`),
    `parse` reads one from the JSON that a 413/422 lists when every image was rejected."""
    images = [data for _, data in batch]
    try:
        samples = send(images)
    except OpenGalleryError as error:
        # Every sample rejected: the outcomes are in the error's details.
        listed = (error.details or {}).get("samples") if error.status in (413, 422) else None
        if not isinstance(listed, list) or len(listed) != len(batch):
            client_side = error.status is not None and 400 <= error.status < 500
            status = "rejected" if client_side else "failed"
            return [Outcome(path, status, str(error)) for path, _ in batch]
        samples = [parse(item) for item in listed]
    if len(samples) != len(batch):
        reason = f"the service answered {len(samples)} outcomes for {len(batch)} images"
        return [Outcome(path, "failed", reason) for path, _ in batch]
    return [
        Outcome(path, done)
        if sample.status == done
        else Outcome(path, "rejected", sample.reason or "rejected")
        for (path, _), sample in zip(batch, samples, strict=True)
    ]


class Enroller:
    def __init__(self, client: Client, gallery: str, *, batch_size: int) -> None:
        self.client = client
        self.gallery = gallery
        self.batch_size = batch_size

    def enrol_subject(self, subject: str, files: list[Path], progress: tqdm) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            known: set[str] = set()
            if not self.client.put_subject(self.gallery, subject).new:
                # An existing subject: what does it hold already?
                detail = self.client.get_subject(self.gallery, subject)
                known = {sample.content_sha256 for sample in detail.samples or []}
            skipped, pending = split_known(files, known, progress, "already enrolled")
            outcomes += skipped
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                outcomes += self._post(subject, batch)
                progress.update(len(batch))
        except (OpenGalleryError, OSError) as error:
            done = {outcome.path for outcome in outcomes}
            rest = [path for path in files if path not in done]
            outcomes += [Outcome(path, "failed", str(error)) for path in rest]
            progress.update(len(rest))
        return outcomes

    def _post(self, subject: str, batch: list[tuple[Path, bytes]]) -> list[Outcome]:
        return batch_outcomes(
            batch,
            lambda images: self.client.enroll(self.gallery, subject, images=images).samples,
            SampleOutcome.from_json,
            "enrolled",
        )


def add_upload_arguments(parser: argparse.ArgumentParser, key: str) -> None:
    """DIR and the options of a resumable batch upload (enroll, calibrate)."""
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--url", default=os.environ.get("OPENGALLERY_URL", "http://127.0.0.1:8000"))
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENGALLERY_API_KEY"),
        help=f"{key} (default: $OPENGALLERY_API_KEY)",
    )
    parser.add_argument("--gallery", required=True)
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests")
    parser.add_argument("--batch-size", type=int, default=8, help="images per request")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a request after a transient failure"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_upload_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line; None when nothing."""
    if not args.api_key:
        return "no API key: pass --api-key or set OPENGALLERY_API_KEY"
    if not args.directory.is_dir():
        return f"{args.directory} is not a directory"
    if args.workers < 1 or args.batch_size < 1:
        return "--workers and --batch-size must be at least 1"
    return None


def upload_client(args: argparse.Namespace) -> Client:
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
    return Client(
        args.url, args.api_key, timeout=args.timeout, retries=max(args.retries, 0), limits=limits
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery enroll",
        description="Enrol DIR/<subject_id>/*.png|jpg into a gallery over HTTP (resumable).",
    )
    add_upload_arguments(parser, "a client or admin key")
    args = parser.parse_args(list(argv))
    prog = "opengallery enroll"
    problem = check_upload_arguments(args)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    subjects = scan(args.directory)
    total = sum(len(files) for files in subjects.values())
    if not total:
        print(f"{prog}: no images under {args.directory}/<subject_id>/", file=sys.stderr)
        return 1
    summary = Summary()
    with upload_client(args) as client:
        try:
            client.get_gallery(args.gallery)
        except OpenGalleryError as error:
            print(f"{prog}: gallery {args.gallery!r}: {error}", file=sys.stderr)
            return 1
        enroller = Enroller(client, args.gallery, batch_size=args.batch_size)
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
