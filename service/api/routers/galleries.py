"""Galleries: create (admin), list, get, delete (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import AdminKey, CalibrationSetsDep, ClientKey, GalleriesDep
from service.api.schemas import GalleryCalibrationOut, GalleryCreate, GalleryList, GalleryOut
from service.core.ids import Identifier
from service.storage import GalleryRecord

router = APIRouter(prefix="/v1/galleries", tags=["galleries"])

GalleryName = Annotated[Identifier, Path(description="gallery name")]


def gallery_out(record: GalleryRecord) -> GalleryOut:
    return GalleryOut(
        name=record.name,
        model=record.model_id,
        fpir=record.fpir,
        scoring=record.scoring,  # type: ignore[arg-type]
        keep_images=record.keep_images,
        subject_count=record.subject_count,
        sample_count=record.sample_count,
        version=record.version,
        created=record.created,
    )


@router.post("", status_code=201, response_model=GalleryOut, summary="Create a gallery")
async def create_gallery(body: GalleryCreate, galleries: GalleriesDep, _: AdminKey) -> GalleryOut:
    record = await run_in_threadpool(
        galleries.create_gallery, body.name, body.model, body.fpir, body.scoring, body.keep_images
    )
    return gallery_out(record)


@router.get("", response_model=GalleryList, summary="List galleries")
async def list_galleries(galleries: GalleriesDep, _: ClientKey) -> GalleryList:
    records = await run_in_threadpool(galleries.list_galleries)
    return GalleryList(galleries=[gallery_out(record) for record in records])


@router.get("/{gallery}", response_model=GalleryOut, summary="Get a gallery")
async def get_gallery(
    gallery: GalleryName,
    galleries: GalleriesDep,
    calibration_sets: CalibrationSetsDep,
    _: ClientKey,
) -> GalleryOut:
    out = gallery_out(await run_in_threadpool(galleries.get_gallery, gallery))
    summary = await run_in_threadpool(calibration_sets.describe_if_loaded, gallery)
    if summary is not None:
        default = summary.default
        out.calibration = GalleryCalibrationOut(
            source=summary.source,  # type: ignore[arg-type]
            size=summary.size,
            min_fpir=summary.min_fpir,
            fpir=summary.fpir,
            threshold=default.threshold if default else None,
            fpir_upper=default.fpir_upper if default else None,
            gallery_set_size=summary.gallery_set_size,
            needed=summary.needed,
        )
    return out


@router.delete("/{gallery}", status_code=204, summary="Delete a gallery and everything in it")
async def delete_gallery(gallery: GalleryName, galleries: GalleriesDep, _: AdminKey) -> Response:
    await run_in_threadpool(galleries.delete_gallery, gallery)
    return Response(status_code=204)
