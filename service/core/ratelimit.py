"""Failed authentications per client address, limited by a token bucket.

Each address may fail `burst` times at once and then `per_second` times a second; past that
its failures are answered 429 with the seconds to wait. A token bucket of a few lines, not a
library: pyrate-limiter (in the test tools) brings buckets, clocks and backends this does not
need, and the rule here must be read at a glance by whoever reviews the auth path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class FailureLimiter:
    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.per_second)

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may fail again; 0 when it may now."""
        if not self.enabled:
            return 0
        with self._lock:
            tokens = self._tokens(address, self.clock())
        if tokens >= 1.0:
            return 0
        if self.per_second <= 0:
            return 3600
        return max(1, math.ceil((1.0 - tokens) / self.per_second))

    def record_failure(self, address: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            self._buckets[address] = (max(0.0, self._tokens(address, now) - 1.0), now)
            if len(self._buckets) > self.max_addresses:
                self._forget_refilled(now)

    def _forget_refilled(self, now: float) -> None:
        full = [a for a in self._buckets if self._tokens(a, now) >= self.burst]
        for address in full:
            del self._buckets[address]
        if len(self._buckets) > self.max_addresses:  # still too many: forget the oldest
            oldest = sorted(self._buckets, key=lambda a: self._buckets[a][1])
            for address in oldest[: len(self._buckets) - self.max_addresses]:
                del self._buckets[address]
