"""Prometheus metrics in the text exposition format (0.0.4), written by hand: no dependency.

Names are prefixed `opengallery_`. Requests and latency per route template (not per raw path,
which would explode the label space), gallery sizes, and known/unknown decisions.

/metrics needs no key (scrapers rarely send one), so gallery names, which may say whose data a
gallery holds, are labels only when `gallery_labels` is on; otherwise the gallery series are
totals over all galleries.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    def __init__(self, *, gallery_labels: bool = False) -> None:
        self.gallery_labels = gallery_labels
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency_counts: dict[tuple[str, str], list[int]] = {}
        self._latency_sums: dict[tuple[str, str], float] = defaultdict(float)
        self._decisions: dict[tuple[str, str], int] = defaultdict(int)
        self._enrolled: dict[tuple[str, str], int] = defaultdict(int)
        # Gauges read at scrape time: gallery name -> (subjects, samples).
        self.gallery_sizes: Callable[[], dict[str, tuple[int, int]]] = dict
        self.storage_full: Callable[[], bool] = lambda: False

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, str(status))] += 1
            key = (method, route)
            counts = self._latency_counts.setdefault(key, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sums[key] += seconds

    def _gallery(self, name: str) -> str:
        return name if self.gallery_labels else ""

    def _gallery_label(self, name: str) -> list[tuple[str, str]]:
        return [("gallery", name)] if self.gallery_labels else []

    def observe_decisions(self, gallery: str, known: int, unknown: int) -> None:
        gallery = self._gallery(gallery)
        with self._lock:
            self._decisions[(gallery, "known")] += known
            self._decisions[(gallery, "unknown")] += unknown

    def observe_enrolment(self, gallery: str, enrolled: int, rejected: int) -> None:
        gallery = self._gallery(gallery)
        with self._lock:
            self._enrolled[(gallery, "enrolled")] += enrolled
            self._enrolled[(gallery, "rejected")] += rejected

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP opengallery_http_requests_total HTTP requests by route and status.",
                "# TYPE opengallery_http_requests_total counter",
            ]
            for (method, route, status), count in sorted(self._requests.items()):
                labels = _labels([("method", method), ("route", route), ("status", status)])
                lines.append(f"opengallery_http_requests_total{labels} {count}")
            lines += [
                "# HELP opengallery_http_request_duration_seconds Request latency by route.",
                "# TYPE opengallery_http_request_duration_seconds histogram",
            ]
            for (method, route), counts in sorted(self._latency_counts.items()):
                base = [("method", method), ("route", route)]
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS, math.inf), counts, strict=True):
                    cumulative += count
                    labels = _labels([*base, ("le", _number(bound))])
                    lines.append(
                        f"opengallery_http_request_duration_seconds_bucket{labels} {cumulative}"
                    )
                name = "opengallery_http_request_duration_seconds"
                lines.append(f"{name}_sum{_labels(base)} {self._latency_sums[(method, route)]!r}")
                lines.append(f"{name}_count{_labels(base)} {cumulative}")
            lines += [
                "# HELP opengallery_decisions_total Identify decisions by gallery.",
                "# TYPE opengallery_decisions_total counter",
            ]
            for (gallery, decision), count in sorted(self._decisions.items()):
                labels = _labels([*self._gallery_label(gallery), ("decision", decision)])
                lines.append(f"opengallery_decisions_total{labels} {count}")
            lines += [
                "# HELP opengallery_samples_submitted_total Enrolment outcomes by gallery.",
                "# TYPE opengallery_samples_submitted_total counter",
            ]
            for (gallery, status), count in sorted(self._enrolled.items()):
                labels = _labels([*self._gallery_label(gallery), ("status", status)])
                lines.append(f"opengallery_samples_submitted_total{labels} {count}")
        lines += [
            "# HELP opengallery_storage_full 1 while writes fail for lack of space (507).",
            "# TYPE opengallery_storage_full gauge",
            f"opengallery_storage_full {int(self.storage_full())}",
        ]
        sizes = self.gallery_sizes()
        if not self.gallery_labels:
            subjects_total = sum(subjects for subjects, _ in sizes.values())
            samples_total = sum(samples for _, samples in sizes.values())
            sizes = {"": (subjects_total, samples_total)}
        lines += [
            "# HELP opengallery_gallery_subjects Subjects (per gallery if labelled).",
            "# TYPE opengallery_gallery_subjects gauge",
        ]
        lines += [
            f"opengallery_gallery_subjects{_labels(self._gallery_label(name))} {subjects}"
            for name, (subjects, _) in sorted(sizes.items())
        ]
        lines += [
            "# HELP opengallery_gallery_samples Indexed samples (per gallery if labelled).",
            "# TYPE opengallery_gallery_samples gauge",
        ]
        lines += [
            f"opengallery_gallery_samples{_labels(self._gallery_label(name))} {samples}"
            for name, (_, samples) in sorted(sizes.items())
        ]
        return "\n".join(lines) + "\n"
