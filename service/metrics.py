"""The gateway's Prometheus metrics (names fixed by SPEC), on a registry of the app's own so
several apps (tests) never share counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Milliseconds to tens of seconds: CPU batches take ~0.1-3 s, GPU ones a few ms.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "HTTP classify requests by model and status code",
            ["model", "code"],
            registry=r,
        )
        self.images = Counter(
            "gateway_images", "Images classified successfully", ["model"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Classify request latency, end to end",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time an image waited in the batcher",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Images per backend batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.backend_duration = Histogram(
            "gateway_backend_duration_seconds",
            "Backend call latency per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests", "Classify requests being handled", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth", "Images waiting in the batcher", ["model"], registry=r
        )
