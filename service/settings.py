"""Gateway settings: one typed object, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.images import ImageLimits
from contract.keys import KEY_FILE_NAME
from contract.lists import comma_separated
from contract.protocol import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_RUN_DIR,
    WORKER_RESPONSE_TIMEOUT_S,
)
from model_store.zoo.registry import DEFAULT_MODELS, MODELS

CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
UPLOAD_COPIES = 3
"""Copies of a body the gateway may hold at once: its chunks and their join while reading, then
the images sliced from it while they are validated (afterwards only the images are kept)."""


def cgroup_memory_limit() -> int | None:
    """This container's memory limit (cgroup v2: a pod's ``limits.memory``, compose's
    ``mem_limit``); None when it has none."""
    try:
        value = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return None
    return int(value) if value.isdigit() else None


def split_urls(urls: str) -> list[str]:
    """A comma-separated list of URLs, each without its trailing slash."""
    return [url.rstrip("/") for url in comma_separated(urls)]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=None, extra="forbid")

    backend: Literal["torchserve", "inprocess"] = "torchserve"
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_MODELS))

    # TorchServe backend: one URL, a comma-separated list (one management URL per inference
    # URL), or with discovery "dns" every address of the inference URL's host name (a headless
    # Service, compose's service name under --scale), found again every discovery_interval_s
    torchserve_inference_url: str = "http://127.0.0.1:8080"
    torchserve_management_url: str = "http://127.0.0.1:8081"
    torchserve_discovery: Literal["static", "dns"] = "static"
    discovery_interval_s: float = Field(2.0, gt=0, le=60)
    # keys are one TorchServe's: with several, turn their token authorization off or use a token
    torchserve_key_file: Path | None = DEFAULT_RUN_DIR / KEY_FILE_NAME
    torchserve_token: str | None = None  # used when no key file is given (e.g. a k8s Secret)

    # inprocess backend: the same archives, loaded into this process
    archive_dir: Path = Path("model_store/archives")

    # batching and backpressure, per model (see service/batcher.py for the two policies)
    batching: Literal["deadline", "fixed"] = "deadline"
    # never above the worker's largest warmed batch bucket (checked against the worker)
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=256)
    # the longest a batch waits for company (always, with the fixed policy)
    max_batch_delay_ms: float = Field(5.0, ge=0, le=1000)
    # batches in flight per model and ready endpoint: its worker count there (one more only
    # pipelines the HTTP hop); the total follows the endpoints the gateway finds
    max_concurrent_batches: int = Field(1, ge=1, le=64)
    queue_limit: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    # a request's deadline when it sends no X-Request-Timeout-Ms: per model, else the timeout
    model_deadline_ms: dict[str, float] = Field(default_factory=dict)
    # the archives' TorchServe responseTimeout is never above this default (see model_store)
    backend_timeout_s: float = Field(float(WORKER_RESPONSE_TIMEOUT_S), gt=0)
    # per-model readiness check; the k8s readiness probe's timeoutSeconds is above it
    readiness_timeout_s: float = Field(2.0, gt=0, le=10)

    # circuit breaker on the backend
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(5.0, gt=0)

    # input limits (image limits default to the worker's: contract.images.ImageLimits)
    max_upload_bytes: int = Field(10 * 2**20, ge=1024)
    max_pixels: int = Field(ImageLimits.max_pixels, ge=1)
    max_aspect_ratio: float = Field(ImageLimits.max_aspect_ratio, ge=1)
    max_batch_pixels: int = Field(ImageLimits.max_batch_pixels, ge=1)
    max_images_per_request: int = Field(16, ge=1)
    # uploads being read at once (each holds up to max_upload_bytes); more get 503 at once
    max_concurrent_uploads: int = Field(64, ge=1)
    # the gateway's memory (unset: its cgroup's limit, memory.max, if any): uploads may reserve
    # upload_memory_share of it, at 3 bytes per byte of body (service/deps.py: UploadSlots)
    memory_limit_bytes: int | None = Field(None, ge=64 * 2**20)
    upload_memory_share: float = Field(0.5, gt=0, le=0.9)
    # bodies parsed at once (a /v2 JSON body's numbers may take 8 times its bytes as objects)
    max_concurrent_decodes: int = Field(2, ge=1, le=64)
    # a request body must arrive within this, and after its first second at least this fast
    # (bytes/s on average): a stalled or trickling upload cannot hold a slot (408)
    upload_timeout_s: float = Field(30.0, gt=0)
    min_upload_rate_bps: float = Field(8 * 1024, ge=0)
    # a request's head (request line and headers): larger or more fields is 431, slower is 408
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    header_timeout_s: float = Field(10.0, gt=0)
    # connections and requests in progress at once; past it, uvicorn answers 503
    max_connections: int = Field(2048, ge=16)
    # on SIGTERM, in-flight requests get this long to finish before the gateway exits
    shutdown_grace_s: float = Field(20.0, gt=0)

    # when set, clients send it as "X-API-Key" everywhere but the probes (/healthz, /readyz,
    # /v2/health/*) and /metrics; /docs and /openapi.json are then off unless public_docs
    api_key: str | None = None
    public_docs: bool = False

    @field_validator("torchserve_key_file", "torchserve_token", "api_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty environment variable means "not set" (compose and k8s pass empty strings)."""
        return None if value == "" else value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str) and not value.startswith("["):
            return comma_separated(value)
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model must be served")
        if unknown := [m for m in value if m not in MODELS]:
            raise ValueError(f"unknown models {unknown}; known: {', '.join(MODELS)}")
        return value

    def deadline_s(self, model: str, requested_ms: float | None) -> float:
        """Seconds a request may take: what it asked for, else its model's SLO, never past
        ``request_timeout_s``."""
        wanted_ms = requested_ms or self.model_deadline_ms.get(model)
        return (
            min(self.request_timeout_s, wanted_ms / 1000) if wanted_ms else self.request_timeout_s
        )

    @field_validator("model_deadline_ms")
    @classmethod
    def _positive_deadlines(cls, value: dict[str, float]) -> dict[str, float]:
        if bad := {m: ms for m, ms in value.items() if m not in MODELS or ms <= 0}:
            raise ValueError(f"deadlines need a known model and a positive time, got {bad}")
        return value

    def upload_memory_bytes(self) -> int | None:
        """What upload bodies may reserve in all (never less than one largest upload); None
        without a memory limit."""
        limit = self.memory_limit_bytes or cgroup_memory_limit()
        if limit is None:
            return None
        return max(int(limit * self.upload_memory_share), UPLOAD_COPIES * self.max_upload_bytes)

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.max_pixels, self.max_aspect_ratio, self.max_batch_pixels)

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> GatewaySettings:
        self.limits  # noqa: B018 -- raises ValueError when max_batch_pixels < max_pixels
        return self

    @model_validator(mode="after")
    def _keys_of_one_torchserve(self) -> GatewaySettings:
        several = (
            self.torchserve_discovery == "dns" or len(split_urls(self.torchserve_inference_url)) > 1
        )
        if several and self.torchserve_key_file is not None:
            raise ValueError(
                "a TorchServe key file holds one TorchServe's keys: with several endpoints, "
                "run them with token authorization off (disable_token_authorization=true, as "
                "the worker container does) or with one shared token (torchserve_token), and "
                "set torchserve_key_file empty"
            )
        return self

    @model_validator(mode="after")
    def _queue_fits_a_batch(self) -> GatewaySettings:
        if self.queue_limit < self.max_batch_size:
            raise ValueError(
                f"queue_limit ({self.queue_limit}) must be >= "
                f"max_batch_size ({self.max_batch_size})"
            )
        return self
