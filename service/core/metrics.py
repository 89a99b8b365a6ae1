"""Prometheus metrics through prometheus-client, in text exposition format 0.0.4.

Names are prefixed `opengallery_`. Requests and latency per route template (not per raw path,
which would explode the label space), gallery sizes, and known/unknown decisions.

Several processes on one machine (`serve --workers N`, or several `serve` on one host) add up
through prometheus-client's multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` names a
directory (set before the process starts, since prometheus-client chooses its value store at
import), every process writes its counters and histograms there and /metrics, whichever
process answers, renders the sum over all of them. Empty that directory when the whole
deployment restarts, as prometheus-client asks. The gauges (gallery sizes, storage full) are
not added up: they describe the database and the disk, which the processes share, so the
process that answers reads them at scrape time.

/metrics needs no key (scrapers rarely send one), so gallery names, which may say whose data a
gallery holds, are labels only when `gallery_labels` is on; otherwise the gallery series are
totals over all galleries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.core.errors import StartupError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The `_created` series (a timestamp per labelled child) double the output and mean nothing
# to a scraper of counters that start with the process.
prometheus_client.disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The shared metrics directory of the processes on this machine, if there is one."""
    return os.environ.get(MULTIPROC_ENV) or None


def fresh_metrics_dir(data_dir: Path) -> Path:
    """`<data_dir>/metrics`, emptied: where the workers of one `serve --workers N` add up (the
    files of an earlier run would count its requests again)."""
    directory = data_dir / "metrics"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


class _ScrapeTimeGauges(Collector):
    """The gauges read from the process's own state when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        full = GaugeMetricFamily(
            "opengallery_storage_full", "1 while writes fail for lack of space (507)."
        )
        full.add_metric([], int(self.metrics.storage_full()))
        yield full
        sizes = self.metrics.gallery_sizes()
        labelled = self.metrics.gallery_labels
        if not labelled:
            sizes = {
                "": (
                    sum(subjects for subjects, _ in sizes.values()),
                    sum(samples for _, samples in sizes.values()),
                )
            }
        labels = ["gallery"] if labelled else []
        subjects = GaugeMetricFamily(
            "opengallery_gallery_subjects", "Subjects (per gallery if labelled).", labels=labels
        )
        samples = GaugeMetricFamily(
            "opengallery_gallery_samples",
            "Indexed samples (per gallery if labelled).",
            labels=labels,
        )
        for name, (subject_count, sample_count) in sorted(sizes.items()):
            values = [name] if labelled else []
            subjects.add_metric(values, subject_count)
            samples.add_metric(values, sample_count)
        yield subjects
        yield samples
        behind = self.metrics.change_log_behind()
        if behind is not None:
            lag = GaugeMetricFamily(
                "opengallery_change_log_behind",
                "Change-log sequence numbers committed in the database that this process has"
                " not applied yet (0: current).",
            )
            lag.add_metric([], behind)
            yield lag


class Metrics:
    def __init__(self, *, gallery_labels: bool = False) -> None:
        self.gallery_labels = gallery_labels
        # Gauges read at scrape time: gallery name -> (subjects, samples).
        self.gallery_sizes: Callable[[], dict[str, tuple[int, int]]] = dict
        self.storage_full: Callable[[], bool] = lambda: False
        # This process's distance behind the change log; None when unknown (no follower, or
        # the database does not answer: the scrape must not fail for it).
        self.change_log_behind: Callable[[], int | None] = lambda: None
        self._multiprocess_dir = multiprocess_dir()
        if self._multiprocess_dir and not os.path.isdir(self._multiprocess_dir):
            raise StartupError(
                f"{MULTIPROC_ENV}={self._multiprocess_dir} is not a directory: create it (empty)"
                " for the metrics of the processes of this machine, or unset it"
            )
        # A registry of this instance's own (several apps may live in one process, in tests);
        # in multiprocess mode the counters are read back from the shared directory instead,
        # so they are registered nowhere.
        self._registry = CollectorRegistry()
        own = None if self._multiprocess_dir else self._registry
        gallery = ["gallery"] if gallery_labels else []
        self._requests = Counter(
            "opengallery_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self._latency = Histogram(
            "opengallery_http_request_duration_seconds",
            "Request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self._decisions = Counter(
            "opengallery_decisions_total",
            "Identify decisions by gallery.",
            [*gallery, "decision"],
            registry=own,
        )
        self._enrolled = Counter(
            "opengallery_samples_submitted_total",
            "Enrolment outcomes by gallery.",
            [*gallery, "status"],
            registry=own,
        )
        if self._multiprocess_dir:
            multiprocess.MultiProcessCollector(self._registry, path=self._multiprocess_dir)
        self._registry.register(_ScrapeTimeGauges(self))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(seconds)

    def _gallery(self, name: str) -> list[str]:
        return [name] if self.gallery_labels else []

    def observe_decisions(self, gallery: str, known: int, unknown: int) -> None:
        self._decisions.labels(*self._gallery(gallery), "known").inc(known)
        self._decisions.labels(*self._gallery(gallery), "unknown").inc(unknown)

    def observe_enrolment(self, gallery: str, enrolled: int, rejected: int) -> None:
        self._enrolled.labels(*self._gallery(gallery), "enrolled").inc(enrolled)
        self._enrolled.labels(*self._gallery(gallery), "rejected").inc(rejected)

    def render(self) -> str:
        return generate_latest(self._registry).decode("utf-8")
