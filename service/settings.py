"""Service settings: every field comes from a CLI flag or an `OPENGALLERY_*` variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of one service instance.

    Precedence: explicit constructor arguments (the CLI flags) > environment > defaults.
    """

    model_config = SettingsConfigDict(env_prefix="OPENGALLERY_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="database, snapshots and stored images")
    model: Path = Field(Path("models/default"), description="the default model bundle directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    admin_key: SecretStr | None = Field(
        None, description="first admin key; generated and printed once when unset"
    )
    log_level: str = "info"

    # Recognition defaults.
    default_fpir: float = Field(0.01, gt=0.0, le=1.0)
    keep_images: bool = Field(True, description="keep enrolled image bytes (needed to migrate)")

    # Limits: each refusal is a 4xx JSON error.
    max_request_bytes: int = Field(64 * MiB, gt=0)
    max_image_bytes: int = Field(16 * MiB, gt=0)
    max_image_pixels: int = Field(25_000_000, gt=0)
    max_items_per_request: int = Field(64, gt=0, description="images/embeddings per request")
    max_top_k: int = Field(100, gt=0)
    max_metadata_bytes: int = Field(16 * 1024, gt=0)
    max_page_size: int = Field(1000, gt=0)

    # Inference and search. One thread each by default: requests already run in parallel in
    # worker threads, and OpenMP/onnxruntime pools that spin on a busy machine cost
    # milliseconds per call (measured: a 1k-vector FAISS search took 8 ms with the default
    # OpenMP pool on 2 loaded cores, 8 microseconds with one thread).
    inference_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads; 0 = auto")
    search_threads: int = Field(1, ge=1, description="FAISS OpenMP threads")
    index_url: str | None = Field(
        None, description="vector index backend: faiss:// (the default, in process memory)"
    )
    inference_batch_size: int = Field(64, gt=0)

    # Dynamic batching: concurrent requests' images share one onnxruntime call.
    # Off by default: on 2 CPU cores with the shipped network it did not win (bench/batching.py,
    # docs/redeploy.md), and a positive wait only delays lone requests.
    batching: bool = Field(False, description="queue small inference calls into shared batches")
    batch_max_size: int = Field(32, gt=0, description="most images in one batched call")
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0.0,
        description="extra wait for more requests after the first (0: take what queued while "
        "the previous batch ran)",
    )

    # Migrations.
    migration_chunk_size: int = Field(64, gt=0, description="images re-embedded per commit")
    migration_pause_ms: float = Field(
        0.0, ge=0.0, description="pause between chunks, to leave CPU to live traffic"
    )

    @property
    def database_path(self) -> Path:
        return self.data_dir / "opengallery.sqlite3"
