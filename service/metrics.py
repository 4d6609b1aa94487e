"""The gateway's Prometheus metrics (names fixed by the contract in ``docs/ARCHITECTURE.md``), on
a registry of the app's own so several apps (tests) never share counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backends.base import Backend, WorkerFacts, ready_endpoints

UNKNOWN_MODEL = "_unknown"
"""The ``model`` label of requests for a model that is not served (bounded label values)."""
PROTOCOL_V1 = "v1"
PROTOCOL_V2 = "v2"
"""The ``protocol`` label of request series: ``/v1`` classify or the Open Inference Protocol.
Batch series (queue, batch size, backend) have none: one batch mixes both protocols."""

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
            "Requests to model routes by model, protocol and the status code answered",
            ["model", "protocol", "code"],
            registry=r,
        )
        self.images = Counter(
            "gateway_images",
            "Images classified successfully",
            ["model", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Model route latency, end to end, every status",
            ["model", "protocol"],
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
        self.backend_predicted = Histogram(
            "gateway_backend_predicted_seconds",
            "The cost model's prediction of each batch's backend time (compare with "
            "gateway_backend_duration_seconds)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deadline_refusals = Counter(
            "gateway_deadline_refusals",
            "Requests refused at once (503 deadline_unmeetable): the work queued ahead would "
            "have answered them after their deadline",
            ["model"],
            registry=r,
        )
        self.key_renewals = Counter(
            "gateway_backend_key_renewals",
            "TorchServe key renewals by key kind (inference, management) and outcome (renewed, "
            "failed): a failure that persists turns into 503s once the key expires",
            ["kind", "outcome"],
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests to model routes being handled",
            ["model", "protocol"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth", "Images waiting in the batcher", ["model"], registry=r
        )

    @contextmanager
    def request(self, model: str, protocol: str) -> Iterator[RequestOutcome]:
        """One request to a model route: in flight while inside, then counted with the status
        its client got (``outcome.status``) and timed."""
        outcome = RequestOutcome()
        started = time.perf_counter()
        self.inflight.labels(model, protocol).inc()
        try:
            yield outcome
        finally:
            self.inflight.labels(model, protocol).dec()
            self.requests.labels(model, protocol, str(outcome.status)).inc()
            self.request_duration.labels(model, protocol).observe(time.perf_counter() - started)

    def watch_workers(self, facts: Callable[[], dict[str, WorkerFacts]]) -> None:
        """What each model's worker reports:
        ``gateway_model_runtime{model,runtime,precision,weight_packing} 1`` (``aot`` or
        ``openvino``, built with the archive; ``jit`` after those could not load here;
        ``eager``; in ``fp32``, ``bf16`` or ``int8``; weights packed ``at_load`` by the serving
        process, ``at_build`` by the archive's builder, or ``none``) and
        ``gateway_worker_compiled_graphs{model}`` (graphs compiled in its process as of its last
        answer: a rise under load is a request that paid for compiling)."""
        self.registry.register(_WorkerCollector(facts))

    def watch_endpoints(self, backend: Backend) -> None:
        """Per model, ``gateway_backend_endpoints{model}`` (ready endpoints); per model and
        endpoint, batches in flight, answered, failed and their summed duration."""
        self.registry.register(_EndpointCollector(backend))


class _EndpointCollector(Collector):
    """Read from the backend at each scrape: an endpoint that is gone has no series left (a
    cluster's pods come and go; their series must not pile up)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "endpoint"]
        ready = GaugeMetricFamily(
            "gateway_backend_endpoints",
            "Ready endpoints (TorchServes) serving each model",
            labels=["model"],
        )
        in_flight = GaugeMetricFamily(
            "gateway_backend_endpoint_in_flight", "Batches in flight per endpoint", labels=labels
        )
        batches = CounterMetricFamily(
            "gateway_backend_endpoint_batches",
            "Batches each endpoint answered since the gateway found it",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "gateway_backend_endpoint_failures",
            "Batches that failed on each endpoint since the gateway found it",
            labels=labels,
        )
        busy = CounterMetricFamily(
            "gateway_backend_endpoint_busy_seconds",
            "Summed duration of each endpoint's batches (over batches: its mean batch time)",
            labels=labels,
        )
        for model, statuses in sorted(self.backend.endpoints().items()):
            ready.add_metric([model], ready_endpoints(statuses))
            for status in statuses:
                where = [model, status.endpoint]
                in_flight.add_metric(where, status.in_flight)
                batches.add_metric(where, status.batches)
                failures.add_metric(where, status.failures)
                busy.add_metric(where, status.busy_seconds)
        yield from (ready, in_flight, batches, failures, busy)


class _WorkerCollector(Collector):
    def __init__(self, facts: Callable[[], dict[str, WorkerFacts]]) -> None:
        self.facts = facts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runtime = GaugeMetricFamily(
            "gateway_model_runtime",
            "1 for the runtime (aot, jit, openvino or eager), precision (fp32, bf16 or int8) "
            "and weight packing (at_load, at_build or none) each model's worker reports",
            labels=["model", "runtime", "precision", "weight_packing"],
        )
        compiled = GaugeMetricFamily(
            "gateway_worker_compiled_graphs",
            "Graphs torch.compile made in each model's worker process, as of its last answer",
            labels=["model"],
        )
        for model, facts in sorted(self.facts().items()):
            packing = facts.weight_packing or "unknown"
            runtime.add_metric([model, facts.runtime, facts.precision, packing], 1)
            if facts.compiled_graphs is not None:
                compiled.add_metric([model], facts.compiled_graphs)
        yield runtime
        yield compiled


@dataclass
class RequestOutcome:
    status: int = 500
    """What the client got; 500 (the server error middleware's answer) until a response starts."""
