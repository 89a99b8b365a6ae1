"""`opengallery export-gallery` and `import-gallery`: copy a gallery between services.

    opengallery export-gallery faces -o faces.tar --url http://old:8000 --api-key $ADMIN_KEY
    opengallery import-gallery faces.tar --name faces --url http://new:8000 --api-key $KEY

The archive holds the gallery's settings, subjects, samples with their embeddings and kept
images, and a manifest of checksums; the service that imports it needs the gallery's model
registered (`opengallery push`), and answers exactly as the original did.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opengallery.client import Client, OpenGalleryError


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
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
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    return parser


def _describe(error: OpenGalleryError) -> str:
    if error.status is None:
        return error.message
    return f"{error.message} ({error.status} {error.code})"


def export_main(argv: Sequence[str]) -> int:
    prog = "opengallery export-gallery"
    parser = _parser(prog, "Download a gallery as one archive (admin).")
    parser.add_argument("gallery", help="the gallery's name")
    parser.add_argument(
        "-o", "--output", type=Path, help="the archive to write (default: GALLERY.tar)"
    )
    args = parser.parse_args(list(argv))
    if not args.api_key:
        print(f"{prog}: give an admin key with --api-key or OPENGALLERY_API_KEY", file=sys.stderr)
        return 2
    output = args.output or Path(f"{args.gallery}.tar")
    if output.is_dir():
        print(f"{prog}: {output} is a directory; name the archive file", file=sys.stderr)
        return 2
    try:
        with Client(args.url, args.api_key, timeout=args.timeout) as client:
            size = client.export_gallery(args.gallery, output)
    except OpenGalleryError as error:
        print(f"{prog}: {_describe(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{prog}: cannot write {output}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"{prog}: wrote {output} ({size} bytes)", file=sys.stderr)
    print(output)
    return 0


def import_main(argv: Sequence[str]) -> int:
    prog = "opengallery import-gallery"
    parser = _parser(prog, "Recreate a gallery from an exported archive (admin).")
    parser.add_argument("archive", type=Path, help="an archive written by export-gallery")
    parser.add_argument("--name", help="the new gallery's name (default: the archive's)")
    args = parser.parse_args(list(argv))
    if not args.api_key:
        print(f"{prog}: give an admin key with --api-key or OPENGALLERY_API_KEY", file=sys.stderr)
        return 2
    if not args.archive.is_file():
        print(f"{prog}: {args.archive} is not a file", file=sys.stderr)
        return 2
    try:
        with Client(args.url, args.api_key, timeout=args.timeout) as client:
            gallery = client.import_gallery(args.archive, args.name)
    except OpenGalleryError as error:
        print(f"{prog}: {_describe(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{prog}: cannot read {args.archive}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(
        f"{prog}: imported gallery {gallery.name!r}: {gallery.subject_count} subjects, "
        f"{gallery.sample_count} samples, model {gallery.model}",
        file=sys.stderr,
    )
    print(gallery.name)
    return 0
