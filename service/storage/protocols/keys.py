"""API keys, stored by the hash of the key (never the key itself)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.storage.records import ApiKeyRecord


class KeyStore(ABC):
    @abstractmethod
    def add_api_key(self, key_hash: str, scope: str, name: str | None) -> ApiKeyRecord:
        """A new key; AlreadyExistsError (nothing changed) if the hash is taken."""

    @abstractmethod
    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    def count_api_keys(self, scope: str | None = None) -> int:
        """All keys, or those of one scope."""

    @abstractmethod
    def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key's record, by id."""

    @abstractmethod
    def revoke_api_key(self, key_id: int) -> ApiKeyRecord:
        """Delete a key; NotFoundError if there is none, LastAdminKeyError (nothing deleted)
        if it is the only admin key. Checked and deleted in one transaction."""

    @abstractmethod
    def touch_api_key(self, key_id: int, when: str) -> None:
        """Record that the key was used at `when` (ISO 8601); a missing key is ignored."""
