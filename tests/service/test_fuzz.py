"""Fuzz the gateway from its own OpenAPI schema (schemathesis): no input may cause a 5xx that
the API contract (docs/ARCHITECTURE.md) does not name, and every answer must match the schema
the API publishes. The Open Inference Protocol routes are fuzzed a second time with bodies that
break the schema, too."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from service.app import create_app
from service.settings import GatewaySettings

from ..servers import GatewayThread
from .fakes import FakeBackend

MODELS = ["se_resnet50", "eca_resnet50"]
SETTINGS = GatewaySettings(models=MODELS, max_batch_delay_ms=1)
schema = schemathesis.openapi.from_dict(create_app(SETTINGS).openapi())  # the schema clients get
v2_schema = schemathesis.openapi.from_dict(create_app(SETTINGS).openapi()).include(
    path_regex="^/v2"
)
v2_schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def gateway_url():
    with GatewayThread(SETTINGS, FakeBackend(MODELS)) as running:
        yield running.url


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_errors_and_answers_match_the_schema(case, gateway_url):
    case.call_and_validate(
        base_url=gateway_url,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )


@v2_schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_v2_answers_malformed_requests_with_client_errors(case, gateway_url):
    case.call_and_validate(
        base_url=gateway_url, checks=[not_a_server_error, response_schema_conformance]
    )
