"""Service settings: every field comes from a CLI flag or an `OPENGALLERY_*` variable."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.storage import StoreConfigError, check_database_url

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of one service instance.

    Precedence: explicit constructor arguments (the CLI flags) > environment > defaults.
    """

    # Inputs stay out of error messages: a database URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="OPENGALLERY_", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(
        Path("var"), description="the default database, registered model bundles and stored images"
    )
    database_url: str | None = Field(
        None,
        repr=False,
        description="the database: sqlite:///relative/path, sqlite:////absolute/path or "
        "postgresql://user:password@host:port/database "
        "(default sqlite:///<data-dir>/opengallery.sqlite3)",
    )
    model: Path = Field(Path("models/default"), description="the default model bundle directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    admin_key: SecretStr | None = Field(
        None, description="first admin key; generated and printed once when unset"
    )
    log_level: str = "info"
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="serving processes on the one port, each a replica following the database's "
        "change log (faiss:// float32 indexes only)",
    )

    key_cache_seconds: float = Field(
        5.0,
        ge=0.0,
        description="how long a key's record is cached: the longest a key revoked by another "
        "process keeps working if this one cannot read the change log (revoking through the "
        "API: at once here, and on other replicas when their followers apply it)",
    )
    # Failed authentications per client address: `auth_failure_burst` at once, then
    # `auth_failures_per_second`; past that 429 with Retry-After. 0 turns the limit off.
    auth_failure_burst: int = Field(20, ge=0, description="failed authentications at once")
    auth_failures_per_second: float = Field(
        1.0, ge=0.0, description="failed authentications a second, after the burst"
    )

    # Recognition defaults.
    default_fpir: float = Field(0.01, gt=0.0, le=1.0)
    keep_images: bool = Field(True, description="keep enrolled image bytes (needed to migrate)")
    allow_empty_database: bool = Field(
        False,
        description="start on a zero-length database file although the data directory was "
        "already initialised (refused by default: the data would look lost)",
    )

    # Limits: each refusal is a 4xx JSON error.
    max_request_bytes: int = Field(64 * MiB, gt=0)
    max_image_bytes: int = Field(16 * MiB, gt=0)
    max_image_pixels: int = Field(25_000_000, gt=0)
    max_request_pixels: int = Field(
        100_000_000,
        gt=0,
        description="pixels all images of one request may hold, read from their headers "
        "before decoding",
    )
    max_items_per_request: int = Field(64, gt=0, description="images/embeddings per request")
    max_bulk_items: int = Field(
        5000, gt=0, description="items per bulk enrolment (POST /v1/galleries/{g}/samples)"
    )
    max_top_k: int = Field(100, gt=0)
    max_metadata_bytes: int = Field(16 * 1024, gt=0)
    max_page_size: int = Field(1000, gt=0)

    # Connections (`opengallery serve`).
    keep_alive_timeout: float = Field(
        5.0, gt=0.0, description="seconds an idle keep-alive connection stays open"
    )
    header_timeout: float = Field(
        10.0, gt=0.0, description="seconds a connection has to send a request's headers"
    )
    body_timeout: float = Field(
        30.0, gt=0.0, description="seconds to wait for each next part of a request body"
    )
    max_connections: int = Field(
        1000, gt=0, description="open connections (or requests) before new requests get 503"
    )
    max_header_bytes: int = Field(64 * 1024, gt=0, description="request line and headers")

    # Inference and search. One thread each by default: requests already run in parallel in
    # worker threads, and OpenMP/onnxruntime pools that spin on a busy machine cost
    # milliseconds per call (measured: a 1k-vector FAISS search took 8 ms with the default
    # OpenMP pool on 2 loaded cores, 8 microseconds with one thread).
    inference_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads; 0 = auto")
    search_threads: int = Field(1, ge=1, description="FAISS OpenMP threads")
    index_url: str | None = Field(
        None,
        repr=False,
        description="vector index backend: faiss:// (the default, in process memory) or "
        "milvus://[user:password@]host:port (a Milvus server)",
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

    metrics_gallery_labels: bool = Field(
        False,
        description="label /metrics series with gallery names (off: totals only, since "
        "/metrics needs no key and names may be sensitive)",
    )

    # Migrations.
    migration_chunk_size: int = Field(64, gt=0, description="images re-embedded per commit")
    migration_pause_ms: float = Field(
        0.0, ge=0.0, description="pause between chunks, to leave CPU to live traffic"
    )
    change_log_retention_hours: float = Field(
        24.0,
        gt=0.0,
        description="changes older than this are deleted from the change log; a replica "
        "that was cut off from the database longer reloads everything when it is back",
    )
    job_lease_seconds: float = Field(
        15.0,
        gt=0.0,
        description="a running job's lease, renewed by the replica running it every third of "
        "this; a replica that dies leaves the job to another after at most this long",
    )

    @field_validator("database_url")
    @classmethod
    def _openable_database_url(cls, url: str | None) -> str | None:
        if not url:  # an empty OPENGALLERY_DATABASE_URL means the default
            return None
        try:
            check_database_url(url)
        except StoreConfigError as error:
            raise ValueError(str(error)) from None
        return url

    @property
    def database_path(self) -> Path:
        """The default database's file, under the data directory."""
        return self.data_dir / "opengallery.sqlite3"

    @property
    def effective_database_url(self) -> str:
        """The URL `open_store` opens: `database_url`, else SQLite under the data directory."""
        return self.database_url or f"sqlite:///{self.database_path}"
