"""`opengallery push BUNDLE`: register a bundle with a running service, optionally migrate.

The service reads bundles from its own disk (`POST /v1/models {"path"}`), so push sends a
path, not the files: the bundle directory must be visible to the server, at the same path
(same machine) or at the path given with `--server-path` (e.g. a Docker volume mounted
elsewhere). Push verifies the bundle locally first (checksum and schema), so a broken
export fails before anything is sent; the server verifies it again and copies it into its
data directory, after which the source may be deleted.

    opengallery push runs/mel/bundle --url http://127.0.0.1:8000 --api-key $ADMIN_KEY \
        --migrate faces            # then follow the migration with a progress bar
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from opengallery.client import Client, Job, OpenGalleryError

PROG = "opengallery push"


class PushError(Exception):
    """A problem to report to the user (message) with exit status 1."""


def _describe(error: OpenGalleryError) -> str:
    return f"{error.message} ({error.status} {error.code})"


def register(client: Client, server_path: str) -> tuple[str | None, str]:
    """POST /v1/models: (model id or None if already there, message).

    An answer that never came (status None) propagates: main reports the service unreachable.
    """
    try:
        model_id = client.register_model(server_path)
    except OpenGalleryError as error:
        if error.status is None:
            raise
        if error.code == "already_exists":
            # The same name@version with a different network is a conflict; the same bundle
            # registered before is harmless.
            if (error.details or {}).get("same_file") is False:
                raise PushError(_describe(error)) from None
            return None, f"already registered: {_describe(error)}"
        raise PushError(f"the service refused the bundle: {_describe(error)}") from None
    return model_id, f"registered {model_id}"


def migrate(
    client: Client, gallery: str, model_id: str, *, wait: bool, progress: bool
) -> Job | None:
    """Start the migration; with `wait`, follow it to the end (its final state).

    A gallery that already uses the model is done already: no job, None.
    """
    try:
        job_id = client.migrate(gallery, model_id)
    except OpenGalleryError as error:
        if error.status is None:
            raise
        if error.code == "already_on_model":  # a repeated push: nothing left to do
            print(f"{PROG}: gallery {gallery!r} already uses {model_id}", file=sys.stderr)
            return None
        raise PushError(f"gallery {gallery!r} cannot migrate: {_describe(error)}") from None
    print(f"{PROG}: migrating gallery {gallery!r} to {model_id}: job {job_id}", file=sys.stderr)
    if not wait:
        return None

    bar = tqdm(desc=f"re-embedding {gallery}", unit="sample", disable=not progress)

    def show(job: Job) -> None:
        bar.total = job.progress.total
        bar.n = job.progress.done
        bar.refresh()

    try:
        job = client.wait_for_job(job_id, poll=0.2, on_progress=show)
    except OpenGalleryError as error:
        if error.status is None:
            raise
        raise PushError(f"job {job_id}: {_describe(error)}") from None
    finally:
        bar.close()
    if job.status == "failed":
        raise PushError(
            f"migration of {gallery!r} failed; it stays on {job.from_model}: {job.error}"
        )
    print(f"{PROG}: gallery {gallery!r} now answers with {model_id}", file=sys.stderr)
    return job


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Register a model bundle with a running service (it reads the bundle from "
        "its own disk: the directory must be visible to the server), then optionally migrate "
        "galleries to it.",
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE_DIR", help="exported bundle")
    parser.add_argument(
        "--url",
        default=os.environ.get("OPENGALLERY_URL", "http://127.0.0.1:8000"),
        help="the service (default: $OPENGALLERY_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENGALLERY_API_KEY"),
        help="an admin key (default: $OPENGALLERY_API_KEY)",
    )
    parser.add_argument(
        "--server-path",
        help="the bundle's path as the server sees it (default: BUNDLE_DIR made absolute)",
    )
    parser.add_argument(
        "--migrate",
        action="append",
        default=[],
        metavar="GALLERY",
        help="migrate this gallery to the bundle (repeatable)",
    )
    parser.add_argument("--no-wait", action="store_true", help="start migrations, do not wait")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args(list(argv))
    if not args.api_key:
        print(f"{PROG}: give an admin key with --api-key or OPENGALLERY_API_KEY", file=sys.stderr)
        return 2

    from models.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as error:
        print(f"{PROG}: not a valid bundle: {error}", file=sys.stderr)
        return 2
    model_id = bundle.manifest.model_id
    server_path = args.server_path or str(args.bundle.resolve())
    try:
        client = Client(args.url, args.api_key, timeout=args.timeout)
    except ValueError as error:  # a URL without http:// or https://
        print(f"{PROG}: --url: {error}", file=sys.stderr)
        return 2
    try:
        with client:
            _, message = register(client, server_path)
            print(f"{PROG}: {message}", file=sys.stderr)
            for gallery in args.migrate:
                migrate(
                    client,
                    gallery,
                    model_id,
                    wait=not args.no_wait,
                    progress=not args.no_progress,
                )
    except PushError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except OpenGalleryError as error:  # no answer: connection refused, reset, timed out
        print(f"{PROG}: cannot reach the service at {args.url}: {error.message}", file=sys.stderr)
        return 1
    print(model_id)
    return 0
