"""API keys: random 32-byte tokens, stored as their SHA-256 (a fast hash suffices: the key has
256 bits of entropy, so there is nothing to brute-force). Scopes: `admin` and `client`."""

from __future__ import annotations

import hashlib
import secrets
import threading

from service.core.errors import ServiceError
from service.storage import ApiKeyRecord, Store

SCOPES = ("admin", "client")
KEY_PREFIX = "og_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: Store, scope: str, name: str | None = None) -> tuple[str, ApiKeyRecord]:
    """A new key: returns the plaintext (shown once) and the stored record."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    key = new_key()
    return key, store.add_api_key(hash_key(key), scope, name)


def lookup(store: Store, key: str) -> ApiKeyRecord | None:
    return store.find_api_key(hash_key(key))


def ensure_admin_key(store: Store, configured: str | None) -> str | None:
    """Make sure an admin key exists.

    A configured key (OPENGALLERY_ADMIN_KEY) is registered if new. Without one, and with no
    admin key stored yet, a key is generated and returned so that the caller prints it once.
    """
    if configured:
        record = lookup(store, configured)
        if record is None:
            store.add_api_key(hash_key(configured), "admin", "from OPENGALLERY_ADMIN_KEY")
        elif record.scope != "admin":
            raise ValueError("OPENGALLERY_ADMIN_KEY is already registered with a non-admin scope")
        return None
    if store.count_api_keys("admin") > 0:
        return None
    key, _ = create_key(store, "admin", "generated at first start")
    return key


class Authenticator:
    """API key -> its record, checked against a scope; records are cached by key hash."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, ApiKeyRecord] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str | None, scope: str) -> ApiKeyRecord:
        """The key's record if it may act in `scope` (admin keys may do everything)."""
        if not key:
            raise ServiceError("unauthorized", "missing API key: send it in the X-API-Key header")
        digest = hash_key(key)
        with self._lock:
            record = self._cache.get(digest)
        if record is None:
            # A miss is one indexed read, once per key.
            record = self.store.find_api_key(digest)
            if record is None:
                raise ServiceError("unauthorized", "invalid API key")
            with self._lock:
                self._cache[digest] = record
        if scope == "admin" and record.scope != "admin":
            raise ServiceError("forbidden", "this operation needs an admin key")
        return record
