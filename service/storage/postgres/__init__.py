"""The PostgreSQL backend: `postgresql://user:password@host:port/database` (psycopg 3 and
psycopg_pool, the `scale` extra). The schema is applied at start from versioned SQL files."""

from service.storage.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
