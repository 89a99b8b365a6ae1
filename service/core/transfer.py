"""Gallery export and import: one tar archive that recreates a gallery exactly.

The archive (format `opengallery-gallery`, version 1) holds, as plain tar members (in any
order; the export writes the manifest last, once every checksum is known):

- `manifest.json`: the format, the gallery's settings (model `name@version`, FPIR, scoring,
  keep_images), the counts, the embedding dimension, and the sha256 of every other member;
- `subjects.jsonl`: one `{"subject_id", "metadata"}` per line, ordered by id;
- `samples.jsonl`: one `{"subject_id", "source", "content_sha256", "image"}` per line, in
  sample order; `image` names the member holding its bytes, or is null;
- `embeddings.f32`: the samples' embeddings by the gallery's model, little-endian float32,
  one row per line of samples.jsonl (bit for bit what the gallery searches);
- `images/<n>`: kept image bytes, when the gallery keeps images;
- when the gallery has its own calibration set (`calibration_size` probes in the manifest):
  `calibration.jsonl`, one `{"source", "content_sha256", "image"}` per probe in probe order,
  `calibration.f32`, their embeddings by the gallery's model as `embeddings.f32` holds the
  samples', and `calibration_images/<n>`, the probes' kept images. An archive without these
  members recreates a gallery without its own set.

The embeddings travel as they are, so the imported gallery gives the same candidates, scores,
thresholds and decisions as the original without re-embedding anything (its thresholds come
from the same calibration set, searched against the same vectors). An import checks all
of it before writing and writes it in one store transaction: an archive that is corrupt,
truncated or tampered with, names a model this service does not have, or a name already taken,
is refused and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from models.scoring import check_scoring
from service.core.calibration import UnsupportedFPIR, check_fpir_supported
from service.core.errors import ServiceError, not_found, store_errors
from service.core.ids import check_id
from service.core.live import LiveGalleries
from service.core.models import LoadedModels
from service.storage import GalleryRecord, NewSample, Store

logger = logging.getLogger("opengallery.service")

ARCHIVE_FORMAT = "opengallery-gallery"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUBJECTS = "subjects.jsonl"
SAMPLES = "samples.jsonl"
EMBEDDINGS = "embeddings.f32"
CALIBRATION_PROBES = "calibration.jsonl"
CALIBRATION = "calibration.f32"
_IMAGE_MEMBER = re.compile(r"^images/[0-9]{1,12}$")
_CALIBRATION_IMAGE_MEMBER = re.compile(r"^calibration_images/[0-9]{1,12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXPORT_PAGE = 512
_NORM_TOLERANCE = 1e-3  # stored embeddings are unit vectors; float32 rounding stays far below


def invalid_archive(message: str) -> ServiceError:
    return ServiceError("invalid_archive", f"not a usable gallery archive: {message}")


@dataclass
class ExportedArchive:
    """A finished archive on disk; `chunks()` streams it and removes it when done."""

    file: IO[bytes]
    size: int
    gallery: str

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        try:
            self.file.seek(0)
            while chunk := self.file.read(size):
                yield chunk
        finally:
            self.file.close()

    def close(self) -> None:
        self.file.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class GalleryTransfer:
    def __init__(self, store: Store, models: LoadedModels, live: LiveGalleries) -> None:
        self.store = store
        self.models = models
        self.live = live

    # -- export --
    def export(self, name: str) -> ExportedArchive:
        """Write gallery `name` to a temporary tar file, under the gallery's mutation lock (a
        consistent copy: writes to this gallery wait; identify does not)."""
        gallery = self.live.find(name)
        if gallery is None:
            self.live.get(name)  # raises not_found or model_unavailable
            raise not_found("gallery", name)
        archive = tempfile.TemporaryFile(prefix="opengallery-export-")  # noqa: SIM115
        try:
            with gallery.lock, tempfile.TemporaryDirectory(prefix="opengallery-export-") as work:
                record = self.store.get_gallery(name)
                if record is None:
                    raise not_found("gallery", name)
                self._write_archive(record, Path(work), archive)
            size = archive.tell()
        except BaseException:
            archive.close()
            raise
        return ExportedArchive(archive, size, name)

    def _write_archive(self, record: GalleryRecord, work: Path, archive: IO[bytes]) -> None:
        # One pass: images go into the tar as they are read; the line files and embeddings
        # are written to `work` first (their sizes must be known before their headers); the
        # manifest, which lists every member's checksum, comes last.
        model = self.models.get(record.model_id)
        dim = model.dim if model is not None else 0
        checksums: dict[str, str] = {}
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(member: str, data: bytes) -> None:
                checksums[member] = _sha256(data)
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            def add_file(member: str, path: Path) -> None:
                digest = hashlib.sha256()
                with path.open("rb") as file:
                    while chunk := file.read(1 << 20):
                        digest.update(chunk)
                    checksums[member] = digest.hexdigest()
                    info = tarfile.TarInfo(member)
                    info.size = file.tell()
                    file.seek(0)
                    tar.addfile(info, file)

            subjects_path = work / "subjects"
            subject_count = 0
            with store_errors(), subjects_path.open("w", encoding="utf-8") as file:
                after: str | None = None
                while page := self.store.list_subjects(record.name, _EXPORT_PAGE, after):
                    for subject in page:
                        line = {"subject_id": subject.subject_id, "metadata": subject.metadata}
                        file.write(json.dumps(line, ensure_ascii=False) + "\n")
                    subject_count += len(page)
                    after = page[-1].subject_id
            add_file(SUBJECTS, subjects_path)

            def add_rows(
                read_page: Callable[[int], Sequence[Any]],
                lines_path: Path,
                vectors_path: Path,
                image_prefix: str,
                describe: Callable[[Any], dict[str, Any]],
            ) -> int:
                """Rows page by page: each one's line (naming its image, added to the tar at
                once) and its float32 embedding; how many rows."""
                nonlocal dim
                count = after_id = 0
                with (
                    store_errors(),
                    lines_path.open("w", encoding="utf-8") as lines,
                    vectors_path.open("wb") as vectors,
                ):
                    while page := read_page(after_id):
                        for row in page:
                            image_member = None
                            if row.image is not None:
                                image_member = f"{image_prefix}/{count}"
                                add_bytes(image_member, row.image)
                            line = {**describe(row), "image": image_member}
                            lines.write(json.dumps(line, ensure_ascii=False) + "\n")
                            vector = np.ascontiguousarray(row.embedding, dtype="<f4")
                            dim = int(vector.shape[0])
                            vectors.write(vector.tobytes())
                            count += 1
                        after_id = page[-1].sample_id
                return count

            samples_path, embeddings_path = work / "samples", work / "embeddings"
            sample_count = add_rows(
                lambda after: self.store.export_samples(
                    record.name, record.model_id, after, _EXPORT_PAGE
                ),
                samples_path,
                embeddings_path,
                "images",
                lambda sample: {
                    "subject_id": sample.subject_id,
                    "source": sample.source,
                    "content_sha256": sample.content_sha256,
                },
            )
            add_file(SAMPLES, samples_path)
            add_file(EMBEDDINGS, embeddings_path)

            # The gallery's own calibration set, whether or not it is large enough yet to be
            # in effect: the copy holds what the original's database holds.
            probes_path, probe_vectors_path = work / "calibration", work / "calibration.f32"
            probe_count = add_rows(
                lambda after: self.store.export_calibration_samples(
                    record.name, record.model_id, after, _EXPORT_PAGE
                ),
                probes_path,
                probe_vectors_path,
                "calibration_images",
                lambda probe: {"source": probe.source, "content_sha256": probe.content_sha256},
            )
            if probe_count:
                add_file(CALIBRATION_PROBES, probes_path)
                add_file(CALIBRATION, probe_vectors_path)

            manifest = {
                "format": ARCHIVE_FORMAT,
                "format_version": FORMAT_VERSION,
                "gallery": {
                    "name": record.name,
                    "model": record.model_id,
                    "fpir": record.fpir,
                    "scoring": record.scoring,
                    "keep_images": record.keep_images,
                },
                "subjects": subject_count,
                "samples": sample_count,
                "embedding_dim": dim,
                "calibration_size": probe_count,
                "sha256": checksums,
            }
            add_bytes(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))

    # -- import --
    def import_archive(self, archive: IO[bytes], name: str | None = None) -> GalleryRecord:
        """Recreate a gallery from an archive, as `name` or under its own name."""
        contents = _read_members(archive)
        manifest = _read_manifest(contents)
        settings = manifest["gallery"]
        target = name if name is not None else settings.get("name")
        if not isinstance(target, str):
            raise invalid_archive("the manifest names no gallery")
        try:
            check_id(target)
        except ValueError as error:
            raise ServiceError("invalid_id", f"gallery name {target!r}: {error}") from None
        model_id = settings.get("model")
        model = self.models.get(model_id) if isinstance(model_id, str) else None
        if model is None:
            known = ", ".join(m.model_id for m in self.models.all()) or "none"
            raise ServiceError(
                "unknown_model",
                f"the archive's gallery uses model {model_id!r}, which this service does not "
                f"have (registered: {known}); register that bundle first (POST /v1/models)",
            )
        fpir, scoring, keep_images = _gallery_settings(settings)
        probe_count = manifest["calibration_size"]
        try:
            # The gallery's own set answers once it holds 10/fpir probes, the bundle's before.
            check_fpir_supported(fpir, max(len(model.calibration), probe_count))
        except UnsupportedFPIR as error:
            raise invalid_archive(
                f"its FPIR does not suit model {model.model_id}: {error}"
            ) from None
        if self.store.get_gallery(target) is not None:
            raise ServiceError("already_exists", f"gallery {target!r} already exists")

        subjects = _read_subjects(contents[SUBJECTS], manifest["subjects"])
        dim = manifest.get("embedding_dim")
        if (manifest["samples"] or probe_count) and dim != model.dim:
            raise invalid_archive(
                f"its embeddings have dimension {dim}; model {model.model_id} makes {model.dim}"
            )
        vectors = _read_vectors(contents[EMBEDDINGS], manifest["samples"], model.dim, EMBEDDINGS)
        samples = _read_samples(contents, manifest["samples"], vectors, {s for s, _ in subjects})
        probes: list[NewSample] = []
        if probe_count:
            probe_vectors = _read_vectors(
                contents[CALIBRATION], probe_count, model.dim, CALIBRATION
            )
            probes = _read_probes(contents, probe_count, probe_vectors)

        with store_errors():
            record = self.store.import_gallery(
                target, model.model_id, fpir, scoring, keep_images, subjects, samples, probes
            )
        try:
            self.live.add_from_store(record, model)
        except BaseException:
            # The gallery is committed but could not be served: take it away again rather
            # than leave a gallery that answers model_unavailable.
            logger.exception("imported gallery %r could not be indexed; removing it", target)
            self.store.delete_gallery(target)
            raise
        logger.info(
            "imported gallery %r: %d subjects, %d samples, %d calibration probes, model %s",
            target,
            record.subject_count,
            record.sample_count,
            len(probes),
            model.model_id,
        )
        return record


_MEMBERS = {MANIFEST, SUBJECTS, SAMPLES, EMBEDDINGS, CALIBRATION_PROBES, CALIBRATION}


def _read_members(archive: IO[bytes]) -> dict[str, bytes]:
    """Every member's bytes by name; only regular files with names this format uses."""
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            for member in tar:
                allowed = member.name in _MEMBERS or any(
                    pattern.match(member.name)
                    for pattern in (_IMAGE_MEMBER, _CALIBRATION_IMAGE_MEMBER)
                )
                if not allowed:
                    raise invalid_archive(f"unexpected member {member.name!r}")
                # A sparse member would inflate beyond the archive's own size when read.
                if not member.isfile() or member.issparse():
                    raise invalid_archive(f"member {member.name!r} is not a regular file")
                if member.name in contents:
                    raise invalid_archive(f"member {member.name!r} appears twice")
                file = tar.extractfile(member)
                assert file is not None
                data = file.read()
                if len(data) != member.size:
                    raise invalid_archive(f"member {member.name!r} is truncated")
                contents[member.name] = data
    except (tarfile.TarError, EOFError, OSError) as error:
        raise invalid_archive(f"the tar file is corrupt or truncated ({error})") from None
    if not contents:
        raise invalid_archive("it is empty")
    return contents


def _read_manifest(contents: dict[str, bytes]) -> dict[str, Any]:
    if MANIFEST not in contents:
        raise invalid_archive(f"{MANIFEST} is missing")
    try:
        manifest = json.loads(contents[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_archive(f"{MANIFEST} is not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise invalid_archive(f"{MANIFEST} does not describe an {ARCHIVE_FORMAT} archive")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise invalid_archive(
            f"format version {manifest.get('format_version')!r}; this service reads "
            f"version {FORMAT_VERSION}"
        )
    checksums = manifest.get("sha256")
    if not isinstance(checksums, dict) or not isinstance(manifest.get("gallery"), dict):
        raise invalid_archive(f"{MANIFEST} lacks the gallery or the checksums")
    # Archives of galleries without their own calibration set may not name its size.
    manifest.setdefault("calibration_size", 0)
    for count in ("subjects", "samples", "calibration_size"):
        value = manifest.get(count)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid_archive(f"{MANIFEST} has no valid {count} count")
    listed, present = set(checksums), set(contents) - {MANIFEST}
    if missing := sorted(listed - present):
        raise invalid_archive(f"members listed in the manifest are missing: {missing[:5]}")
    if extra := sorted(present - listed):
        raise invalid_archive(f"members not listed in the manifest: {extra[:5]}")
    for required in (SUBJECTS, SAMPLES, EMBEDDINGS):
        if required not in listed:
            raise invalid_archive(f"{required} is missing")
    calibration_members = {CALIBRATION_PROBES, CALIBRATION} | {
        member for member in listed if _CALIBRATION_IMAGE_MEMBER.match(member)
    }
    if manifest["calibration_size"]:
        for required in (CALIBRATION_PROBES, CALIBRATION):
            if required not in listed:
                raise invalid_archive(f"{required} is missing")
    elif stray := sorted(listed & calibration_members):
        raise invalid_archive(f"calibration members but a calibration_size of 0: {stray[:5]}")
    for member, expected in checksums.items():
        if not isinstance(expected, str) or _sha256(contents[member]) != expected:
            raise invalid_archive(f"checksum mismatch in {member!r} (damaged or altered)")
    return manifest


def _gallery_settings(settings: dict[str, Any]) -> tuple[float, str, bool]:
    fpir, scoring, keep_images = (
        settings.get("fpir"),
        settings.get("scoring"),
        settings.get("keep_images"),
    )
    if not isinstance(fpir, int | float) or isinstance(fpir, bool) or not 0.0 < fpir <= 1.0:
        raise invalid_archive(f"the gallery's fpir {fpir!r} is not in (0, 1]")
    try:
        check_scoring(scoring)
    except ValueError as error:
        raise invalid_archive(str(error)) from None
    if not isinstance(keep_images, bool):
        raise invalid_archive("the gallery's keep_images is not true or false")
    return float(fpir), str(scoring), keep_images


def _jsonl(data: bytes, member: str, expected: int) -> list[dict[str, Any]]:
    try:
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_archive(f"{member} is not JSON lines ({error})") from None
    if len(lines) != expected:
        raise invalid_archive(f"{member} has {len(lines)} entries; the manifest says {expected}")
    if not all(isinstance(line, dict) for line in lines):
        raise invalid_archive(f"{member} holds a line that is not an object")
    return lines


def _read_subjects(data: bytes, expected: int) -> list[tuple[str, dict[str, Any]]]:
    subjects: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for line in _jsonl(data, SUBJECTS, expected):
        subject_id, metadata = line.get("subject_id"), line.get("metadata")
        try:
            check_id(subject_id if isinstance(subject_id, str) else "")
        except ValueError as error:
            raise invalid_archive(f"subject id {subject_id!r}: {error}") from None
        if not isinstance(metadata, dict):
            raise invalid_archive(f"subject {subject_id!r}: metadata is not an object")
        if subject_id in seen:
            raise invalid_archive(f"subject {subject_id!r} appears twice")
        seen.add(subject_id)
        subjects.append((subject_id, metadata))
    return subjects


def _read_vectors(data: bytes, expected: object, dim: int, member: str) -> np.ndarray:
    if not isinstance(expected, int) or expected < 0 or len(data) != expected * dim * 4:
        raise invalid_archive(
            f"{member} holds {len(data)} bytes, not {expected} rows of {dim} float32"
        )
    vectors = np.frombuffer(data, dtype="<f4").reshape(expected, dim).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise invalid_archive(f"{member} holds a number that is not finite")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if len(norms) and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
        raise invalid_archive(f"{member} holds a vector that is not of unit length")
    return vectors


def _read_samples(
    contents: dict[str, bytes], expected: int, vectors: np.ndarray, subject_ids: set[str]
) -> list[tuple[str, NewSample]]:
    samples: list[tuple[str, NewSample]] = []
    seen: set[tuple[str, str]] = set()
    used_images: set[str] = set()
    for row, line in enumerate(_jsonl(contents[SAMPLES], SAMPLES, expected)):
        subject_id, source = line.get("subject_id"), line.get("source")
        digest = line.get("content_sha256")
        if subject_id not in subject_ids:
            raise invalid_archive(f"sample {row} belongs to subject {subject_id!r}, not listed")
        if source not in {"image", "embedding"}:
            raise invalid_archive(f"sample {row} has source {source!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise invalid_archive(f"sample {row} has no valid content_sha256")
        if (subject_id, digest) in seen:
            raise invalid_archive(f"sample {row} repeats content of subject {subject_id!r}")
        seen.add((subject_id, digest))
        image = _image(contents, f"sample {row}", line, _IMAGE_MEMBER, used_images)
        samples.append((str(subject_id), NewSample(digest, source, vectors[row], image)))
    _check_all_used(contents, _IMAGE_MEMBER, used_images, "sample")
    return samples


def _read_probes(contents: dict[str, bytes], expected: int, vectors: np.ndarray) -> list[NewSample]:
    probes: list[NewSample] = []
    seen: set[str] = set()
    used_images: set[str] = set()
    for row, line in enumerate(_jsonl(contents[CALIBRATION_PROBES], CALIBRATION_PROBES, expected)):
        source, digest = line.get("source"), line.get("content_sha256")
        what = f"calibration probe {row}"
        if source not in {"image", "embedding"}:
            raise invalid_archive(f"{what} has source {source!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise invalid_archive(f"{what} has no valid content_sha256")
        if digest in seen:
            raise invalid_archive(f"{what} repeats the content of another probe")
        seen.add(digest)
        image = _image(contents, what, line, _CALIBRATION_IMAGE_MEMBER, used_images)
        probes.append(NewSample(digest, source, vectors[row], image))
    _check_all_used(contents, _CALIBRATION_IMAGE_MEMBER, used_images, "calibration probe")
    return probes


def _image(
    contents: dict[str, bytes],
    what: str,
    line: dict[str, Any],
    pattern: re.Pattern[str],
    used_images: set[str],
) -> bytes | None:
    """The bytes of the image member `line` names (checked against its content hash), or None."""
    image_member = line.get("image")
    if image_member is None:
        return None
    if not isinstance(image_member, str) or image_member not in contents:
        raise invalid_archive(f"{what} names image {image_member!r}, not present")
    if not pattern.match(image_member) or image_member in used_images:
        raise invalid_archive(f"{what} names image {image_member!r} twice or oddly")
    used_images.add(image_member)
    image = contents[image_member]
    if line.get("source") != "image" or _sha256(image) != line.get("content_sha256"):
        raise invalid_archive(f"{what}: its image does not match its content hash")
    return image


def _check_all_used(
    contents: dict[str, bytes], pattern: re.Pattern[str], used_images: set[str], what: str
) -> None:
    images = {member for member in contents if pattern.match(member)}
    if unused := sorted(images - used_images):
        raise invalid_archive(f"images no {what} names: {unused[:5]}")
