"""Prometheus metrics, one registry per app (no process-global registry)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("backend_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("backend_errors_total", "Requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("backend_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_load_seconds = Gauge("backend_model_load_seconds", "Seconds a model took to load",
                                        ["model"], registry=self.registry, multiprocess_mode="max")
        self.embedding_cache = Counter("backend_sam_embedding_cache_total", "SAM image embedding lookups",
                                       ["result"], registry=self.registry)
        self.task_images_failed = Counter("backend_task_images_failed_total",
                                          "Task images that could not be fetched or decoded", registry=self.registry)

    def render(self) -> bytes:
        """Text exposition; aggregates all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
