"""`opengallery enroll`: batch-enrol a folder `DIR/<subject_id>/**/<image>` over HTTP.

Every image under a subject's folder, nested folders included, belongs to that subject; an
image is a file with a suffix of a format the service decodes (PNG, JPEG, BMP, GIF, TIFF,
WebP, PPM). Other files, and files directly in DIR, are reported as skipped.

Images of any subjects go together in bulk requests (POST /v1/galleries/{g}/samples, which
creates the subjects it needs in the same transaction), several requests at once, with a
progress bar. Resumable: the service recognises content a subject already holds and answers
it as already enrolled, so a rerun (or a request retried after a lost response) never enrols
an image twice; a rerun sends the files again, and reports what was there as "already
enrolled". A folder whose name the service refuses as a subject id has each of its files
reported as failed with the service's reason. A subject is created only with an image the
service accepted: no empty subjects.
Exit status: 0 when every image is enrolled (now or before), 1 when any was rejected or
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from opengallery.client import (
    INVALID_RESPONSE,
    BulkItem,
    BulkOutcome,
    Client,
    OpenGalleryError,
)
from opengallery.uploads import (
    Outcome,
    Summary,
    add_upload_arguments,
    image_files,
    upload_client,
)


def scan(root: Path) -> tuple[dict[str, list[Path]], list[Outcome]]:
    """Subjects (folder names, checked by the service) with their images, and the files skipped."""
    subjects: dict[str, list[Path]] = {}
    skipped: list[Outcome] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            images, others = image_files(entry)
            skipped += [
                Outcome(path, "skipped", "not an image format the service reads") for path in others
            ]
            if images:
                subjects[entry.name] = images
        elif entry.is_file():
            skipped.append(Outcome(entry, "skipped", "not in a subject folder"))
    return subjects, skipped


class Enroller:
    """Sends (subject, image) pairs in bulk requests; one outcome per file."""

    def __init__(self, client: Client, gallery: str) -> None:
        self.client = client
        self.gallery = gallery

    def enrol_batch(self, batch: list[tuple[str, Path]], progress: tqdm) -> list[Outcome]:
        try:
            items = [BulkItem(subject, image=path.read_bytes()) for subject, path in batch]
            samples = self._send(items)
            outcomes = [
                _outcome(path, sample) for (_, path), sample in zip(batch, samples, strict=True)
            ]
        except OSError as error:
            outcomes = [Outcome(path, "failed", str(error)) for _, path in batch]
        except OpenGalleryError as error:
            client_side = error.status is not None and 400 <= error.status < 500
            status = "rejected" if client_side else "failed"
            outcomes = [Outcome(path, status, str(error)) for _, path in batch]
        progress.update(len(batch))
        return outcomes

    def _send(self, items: list[BulkItem]) -> list[BulkOutcome]:
        try:
            samples = self.client.enroll_many(self.gallery, items, create_subjects=True).samples
        except OpenGalleryError as error:
            # Every item rejected: the outcomes are in the error's details.
            listed = (error.details or {}).get("samples")
            if not isinstance(listed, list) or len(listed) != len(items):
                raise
            samples = [BulkOutcome.from_json(item) for item in listed]
        if len(samples) != len(items):
            raise OpenGalleryError(
                f"the service answered {len(samples)} outcomes for {len(items)} images",
                code=INVALID_RESPONSE,
            )
        return samples


def _outcome(path: Path, sample: BulkOutcome) -> Outcome:
    if sample.enrolled:
        return (
            Outcome(path, "present", "already enrolled")
            if sample.duplicate
            else Outcome(path, "enrolled")
        )
    # A folder name the service refuses as an id: the file could not be sent to a subject.
    status = "failed" if sample.code == "invalid_id" else "rejected"
    return Outcome(path, status, sample.reason or "rejected")


def batches(subjects: dict[str, list[Path]], size: int) -> list[list[tuple[str, Path]]]:
    pairs = [(subject, path) for subject, files in subjects.items() for path in files]
    return [pairs[start : start + size] for start in range(0, len(pairs), size)]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="opengallery enroll",
        description="Enrol the images under DIR/<subject_id>/ (nested folders included) into a "
        "gallery over HTTP (resumable).",
    )
    add_upload_arguments(
        parser,
        "a client or admin key",
        batch_size=64,
        batch_help="images per request (of any subjects)",
    )
    args = parser.parse_args(list(argv))
    prog = "opengallery enroll"
    client = upload_client(args)
    if isinstance(client, str):
        print(f"{prog}: {client}", file=sys.stderr)
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
        enroller = Enroller(client, args.gallery)
        with (
            tqdm(total=total, unit="image", disable=args.no_progress, file=sys.stderr) as progress,
            ThreadPoolExecutor(max_workers=args.workers) as pool,
        ):
            futures = [
                pool.submit(enroller.enrol_batch, batch, progress)
                for batch in batches(subjects, args.batch_size)
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
    return 0 if rejected == 0 and failed == 0 else 1
