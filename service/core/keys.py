"""API keys: random 32-byte tokens, stored as their SHA-256 (a fast hash suffices: the key has
256 bits of entropy, so there is nothing to brute-force). Scopes: `admin` and `client`."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from service.core.errors import ServiceError, not_found
from service.storage import ApiKeyRecord, LastAdminKeyError, NotFoundError, Store

logger = logging.getLogger("opengallery.service")

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


def revoke_key(store: Store, key_id: int) -> ApiKeyRecord:
    """Delete a key; ServiceError not_found, or last_admin_key when it is the only admin key."""
    try:
        return store.revoke_api_key(key_id)
    except NotFoundError:
        raise not_found("API key", key_id) from None
    except LastAdminKeyError:
        raise ServiceError(
            "last_admin_key",
            f"API key {key_id} is the only admin key: create another admin key before "
            "revoking this one",
        ) from None


class Authenticator:
    """API key -> its record, checked against a scope.

    Records are cached by key hash for `cache_seconds`: a key revoked through this object
    stops working at once; one revoked by another process (another replica, or `opengallery
    keys revoke`) as soon as the change log's follower meets the revocation (`forget`), and
    within `cache_seconds` at worst. `last_used` is written at most once per
    `touch_seconds` per key, in a background thread, so that no request waits on a write.
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = 5.0,
        touch_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.touch_seconds = touch_seconds
        self.clock = clock
        self._cache: dict[str, tuple[ApiKeyRecord, float]] = {}  # hash -> (record, expiry)
        self._touched: dict[int, float] = {}  # key id -> when last_used was last written
        self._lock = threading.Lock()
        self._writers: set[threading.Thread] = set()  # last_used writes under way
        self._closed = False

    def authenticate(self, key: str | None, scope: str) -> ApiKeyRecord:
        """The key's record if it may act in `scope` (admin keys may do everything)."""
        if not key:
            raise ServiceError("unauthorized", "missing API key: send it in the X-API-Key header")
        digest = hash_key(key)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            record = cached[0]
        else:
            # A miss is one indexed read, once per key and cache period.
            found = self.store.find_api_key(digest)
            if found is None:
                with self._lock:
                    self._cache.pop(digest, None)
                raise ServiceError("unauthorized", "invalid API key")
            record = found
            with self._lock:
                self._cache[digest] = (record, now + self.cache_seconds)
        self.authorize(record, scope)
        self._touch(record.key_id, now)
        return record

    @staticmethod
    def authorize(record: ApiKeyRecord, scope: str) -> ApiKeyRecord:
        """A record already authenticated, checked against `scope` (admin keys may do
        everything); ServiceError forbidden otherwise."""
        if scope == "admin" and record.scope != "admin":
            raise ServiceError("forbidden", "this operation needs an admin key")
        return record

    def revoke(self, key_id: int) -> ApiKeyRecord:
        """Revoke a key (see `revoke_key`); it stops working at once in this process."""
        record = revoke_key(self.store, key_id)
        self.forget(key_id)
        return record

    def forget(self, key_id: int) -> None:
        """Drop what is cached of key `key_id` (revoked elsewhere: another replica, or
        `opengallery keys revoke`); its next use reads the database."""
        with self._lock:
            for digest in [d for d, (r, _) in self._cache.items() if r.key_id == key_id]:
                del self._cache[digest]
            self._touched.pop(key_id, None)

    def forget_all(self) -> None:
        """Drop every cached record (revocations may have been missed)."""
        with self._lock:
            self._cache.clear()

    def _touch(self, key_id: int, now: float) -> None:
        with self._lock:
            last = self._touched.get(key_id)
            if last is not None and now - last < self.touch_seconds:
                return
            self._touched[key_id] = now
        when = datetime.now(UTC).isoformat(timespec="seconds")
        writer = threading.Thread(target=self._write_touch, args=(key_id, when), daemon=True)
        with self._lock:
            if self._closed:
                return
            self._writers.add(writer)
            writer.start()

    def _write_touch(self, key_id: int, when: str) -> None:
        try:
            self.store.touch_api_key(key_id, when)
        except Exception as error:  # a full disk must not fail requests over a statistic
            logger.warning("could not record the use of API key %d: %s", key_id, error)
        finally:
            with self._lock:
                self._writers.discard(threading.current_thread())

    def close(self) -> None:
        """Wait for the last_used writes under way: the store closes after this, and a
        connection closed under a writing thread is undefined behaviour in SQLite."""
        with self._lock:
            self._closed = True
            writers = list(self._writers)
        for writer in writers:
            writer.join()
