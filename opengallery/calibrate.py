"""`opengallery calibrate`: upload a folder of strangers as a gallery's own calibration set.

Every image under DIR (any depth) is a non-mated probe: a person who is NOT enrolled in the
gallery, from the deployment's own cameras or data. Concurrent batches with a progress bar;
resumable like `opengallery enroll`: the sha256 of each file is compared with the set the
gallery already holds, so a rerun sends only what is missing (and the service is idempotent on
content, so a retried request never adds an image twice). Needs an admin key.
Exit status: 0 when every image is in the set (now or before), 1 when any was rejected or
failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from opengallery.client import CalibrationProbe, Client, OpenGalleryError
from opengallery.uploads import (
    Outcome,
    Summary,
    add_upload_arguments,
    batch_outcomes,
    image_files,
    split_known,
    upload_client,
)

PROG = "opengallery calibrate"


def upload(
    client: Client,
    gallery: str,
    files: list[Path],
    *,
    batch_size: int,
    workers: int,
    progress: tqdm,
) -> list[Outcome]:
    known = {sample.content_sha256 for sample in client.iter_calibration_samples(gallery, 1000)}
    outcomes, pending = split_known(files, known, progress, "already in the set")

    def send(batch: list[tuple[Path, bytes]]) -> list[Outcome]:
        result = batch_outcomes(
            batch,
            lambda images: client.add_calibration_samples(gallery, images=images).samples,
            CalibrationProbe.from_json,
            "accepted",
        )
        progress.update(len(batch))
        return result

    batches = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(send, batch) for batch in batches]):
            outcomes += future.result()
    return outcomes


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Upload every image under DIR (people NOT enrolled, from your deployment) to a "
            "gallery's own calibration set over HTTP (resumable)."
        ),
    )
    add_upload_arguments(parser, "an admin key", batch_size=8, batch_help="images per request")
    args = parser.parse_args(list(argv))
    client = upload_client(args)
    if isinstance(client, str):
        print(f"{PROG}: {client}", file=sys.stderr)
        return 2
    files, _ = image_files(args.directory)
    if not files:
        client.close()
        print(f"{PROG}: no images under {args.directory}", file=sys.stderr)
        return 1
    summary = Summary()
    with client:
        try:
            client.get_calibration(args.gallery)
            with tqdm(
                total=len(files), unit="image", disable=args.no_progress, file=sys.stderr
            ) as progress:
                summary.outcomes = upload(
                    client,
                    args.gallery,
                    files,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    progress=progress,
                )
            calibration = client.get_calibration(args.gallery)
        except (OpenGalleryError, OSError) as error:
            print(f"{PROG}: gallery {args.gallery!r}: {error}", file=sys.stderr)
            return 1
    accepted, skipped = summary.count("accepted"), summary.count("present")
    rejected, failed = summary.count("rejected"), summary.count("failed")
    print(
        f"{accepted} added, {skipped} already in the set, {rejected} rejected, {failed} failed "
        f"(gallery {args.gallery!r})"
    )
    for outcome in sorted(summary.outcomes, key=lambda o: str(o.path)):
        if outcome.status in {"rejected", "failed"}:
            print(f"  {outcome.status}: {outcome.path}: {outcome.reason}")
    if calibration.source == "gallery":
        print(f"the gallery answers from its own set: {calibration.size} non-mated searches")
    else:
        print(
            f"the gallery's own set holds {calibration.gallery_set_size} of the "
            f"{calibration.needed} probes its fpir {calibration.fpir} needs; until then it "
            f"answers from the model's set ({calibration.size} searches)"
        )
    for point in calibration.thresholds:
        threshold = "none (empty gallery)" if point.threshold is None else f"{point.threshold:.6f}"
        print(f"  fpir {point.fpir:g}: threshold {threshold}, fpir_upper {point.fpir_upper:.4g}")
    return 0 if rejected == 0 and failed == 0 else 1
