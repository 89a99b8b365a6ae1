"""`opengallery enroll`: batch-enrol a folder `DIR/<subject_id>/**/<image>` over HTTP.

Every image under a subject's folder, nested folders included, belongs to that subject; an
image is a file with a suffix of a format the service decodes (PNG, JPEG, BMP, GIF, TIFF,
WebP, PPM). Other files, and files directly in DIR, are reported as skipped.

Concurrent (a thread pool, one subject per task), with a progress bar, and resumable: each
image's sha256 is compared with the `content_sha256` of the samples the subject already has,
so a rerun sends only what is missing. The server is idempotent on content too, so a request
retried after a lost response never enrols an image twice. A folder whose name the service
refuses as a subject id has each of its files reported as failed with the service's reason.
A subject is created before its images are sent (the service needs it to exist) and deleted
again when this run created it and none of its images was enrolled: no empty subjects.
Exit status: 0 when every image is enrolled (now or before), 1 when any was rejected or
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from opengallery.client import Client, OpenGalleryError, SampleOutcome

# The suffixes Pillow gives the formats the service decodes (service/core/images.py
# ALLOWED_FORMATS; a test keeps the two in step). The client does not import the service.
IMAGE_SUFFIXES = frozenset(
    {
        *(".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff"),
        *(".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm"),
    }
)


@dataclass
class Outcome:
    path: Path
    # "enrolled" | "present" (enrolled before) | "rejected" | "failed" | "skipped" (not sent)
    status: str
    reason: str = ""


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)


def _files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, at any depth, in sorted order (symlinked folders are not
    followed: they could loop)."""
    found = []
    for directory, _, names in os.walk(folder):
        found += [Path(directory, name) for name in names]
    return sorted(path for path in found if path.is_file())


def scan(root: Path) -> tuple[dict[str, list[Path]], list[Outcome]]:
    """Subjects (folder names, checked by the service) with their images, and the files skipped."""
    subjects: dict[str, list[Path]] = {}
    skipped: list[Outcome] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            images = []
            for path in _files_under(entry):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(path)
                else:
                    skipped.append(
                        Outcome(path, "skipped", "not an image format the service reads")
                    )
            if images:
                subjects[entry.name] = images
        elif entry.is_file():
            skipped.append(Outcome(entry, "skipped", "not in a subject folder"))
    return subjects, skipped


class Enroller:
    def __init__(self, client: Client, gallery: str, *, batch_size: int) -> None:
        self.client = client
        self.gallery = gallery
        self.batch_size = batch_size
        self.left_empty: list[str] = []  # subjects created empty that could not be deleted

    def enrol_subject(self, subject: str, files: list[Path], progress: tqdm) -> list[Outcome]:
        outcomes: list[Outcome] = []
        created = False
        try:
            known: set[str] = set()
            created = self.client.put_subject(self.gallery, subject).new
            if not created:
                # An existing subject: what does it hold already?
                detail = self.client.get_subject(self.gallery, subject)
                known = {sample.content_sha256 for sample in detail.samples or []}
            pending: list[tuple[Path, bytes]] = []
            for path in files:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() in known:
                    outcomes.append(Outcome(path, "present", "already enrolled"))
                    progress.update(1)
                else:
                    pending.append((path, data))
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                outcomes += self._post(subject, batch)
                progress.update(len(batch))
        except (OpenGalleryError, OSError) as error:
            done = {outcome.path for outcome in outcomes}
            rest = [path for path in files if path not in done]
            outcomes += [Outcome(path, "failed", str(error)) for path in rest]
            progress.update(len(rest))
        if created and not any(outcome.status == "enrolled" for outcome in outcomes):
            self._delete_if_empty(subject)
        return outcomes

    def _delete_if_empty(self, subject: str) -> None:
        """Delete a subject this run created when none of its images was enrolled, unless
        someone else enrolled a sample meanwhile; a failure is reported, not raised."""
        try:
            if self.client.get_subject(self.gallery, subject).sample_count == 0:
                self.client.delete_subject(self.gallery, subject)
        except OpenGalleryError as error:
            self.left_empty.append(f"{subject}: created, no image enrolled, not deleted: {error}")

    def _post(self, subject: str, batch: list[tuple[Path, bytes]]) -> list[Outcome]:
        images = [data for _, data in batch]
        try:
            samples = self.client.enroll(self.gallery, subject, images=images).samples
        except OpenGalleryError as error:
            # Every sample rejected: the outcomes are in the error's details.
            listed = (error.details or {}).get("samples") if error.status in (413, 422) else None
            if not isinstance(listed, list) or len(listed) != len(batch):
                client_side = error.status is not None and 400 <= error.status < 500
                status = "rejected" if client_side else "failed"
                return [Outcome(path, status, str(error)) for path, _ in batch]
            samples = [SampleOutcome.from_json(item) for item in listed]
        if len(samples) != len(batch):
            reason = f"the service answered {len(samples)} outcomes for {len(batch)} images"
            return [Outcome(path, "failed", reason) for path, _ in batch]
        return [
            Outcome(path, "enrolled")
            if sample.enrolled
            else Outcome(path, "rejected", sample.reason or "rejected")
            for (path, _), sample in zip(batch, samples, strict=True)
        ]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery enroll",
        description="Enrol the images under DIR/<subject_id>/ (nested folders included) into a "
        "gallery over HTTP (resumable).",
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
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
    try:
        client = Client(
            args.url,
            args.api_key,
            timeout=args.timeout,
            retries=max(args.retries, 0),
            limits=limits,
        )
    except ValueError as error:  # a URL without http:// or https://
        print(f"{prog}: --url: {error}", file=sys.stderr)
        return 2
    subjects, skipped = scan(args.directory)
    total = sum(len(files) for files in subjects.values())
    if not total:
        client.close()
        print(
            f"{prog}: no images under {args.directory}/<subject_id>/ "
            f"({len(skipped)} other files skipped)",
            file=sys.stderr,
        )
        return 1
    summary = Summary(list(skipped))
    with client:
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
    enrolled, present = summary.count("enrolled"), summary.count("present")
    rejected, failed = summary.count("rejected"), summary.count("failed")
    print(
        f"{enrolled} enrolled, {present} already enrolled, {rejected} rejected, {failed} failed, "
        f"{summary.count('skipped')} skipped ({len(subjects)} subjects, gallery {args.gallery!r})"
    )
    for outcome in sorted(summary.outcomes, key=lambda o: str(o.path)):
        if outcome.status in {"rejected", "failed", "skipped"}:
            print(f"  {outcome.status}: {outcome.path}: {outcome.reason}")
    for line in sorted(enroller.left_empty):
        print(f"  subject {line}")
    return 0 if rejected == 0 and failed == 0 else 1
