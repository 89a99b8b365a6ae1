"""What `opengallery enroll` and `opengallery calibrate` share: finding image files,
per-file outcomes, resuming by content hash, and the options and client of an upload."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from opengallery.client import Client, OpenGalleryError

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


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below ``folder``, at any depth, sorted."""
    images, others = [], []
    for path in _files_under(folder):
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def split_known(
    files: list[Path], known: set[str], progress: tqdm, already: str
) -> tuple[list[Outcome], list[tuple[Path, bytes]]]:
    """Files whose sha256 the service already holds ("present", with reason `already`), and
    the others with their bytes, to send: what makes a rerun resume without resending."""
    present: list[Outcome] = []
    pending: list[tuple[Path, bytes]] = []
    for path in files:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() in known:
            present.append(Outcome(path, "present", already))
            progress.update(1)
        else:
            pending.append((path, data))
    return present, pending


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


def add_upload_arguments(
    parser: argparse.ArgumentParser, key: str, *, batch_size: int, batch_help: str
) -> None:
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
    parser.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a request after a transient failure"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def upload_client(args: argparse.Namespace) -> Client | str:
    """The client the arguments describe, or what is wrong with them in one line."""
    if not args.api_key:
        return "no API key: pass --api-key or set OPENGALLERY_API_KEY"
    if not args.directory.is_dir():
        return f"{args.directory} is not a directory"
    if args.workers < 1 or args.batch_size < 1:
        return "--workers and --batch-size must be at least 1"
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
    try:
        return Client(
            args.url,
            args.api_key,
            timeout=args.timeout,
            retries=max(args.retries, 0),
            limits=limits,
        )
    except ValueError as error:  # a URL without http:// or https://
        return f"--url: {error}"
