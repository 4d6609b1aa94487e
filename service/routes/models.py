"""``GET /v1/models``: what is served, with architecture, attention, size, status, the runtime
its worker reports and how many endpoints serve it."""

from __future__ import annotations

from fastapi import APIRouter

from ..backends.base import ready_endpoints
from ..deps import ApiKeyDep, GatewayDep
from ..schemas import ModelList

router = APIRouter(tags=["models"])
REPORTED = {
    "runtime",
    "precision",
    "weight_packing",
    "threads",
    "cpu_slots",
    "parameters",
    "attention_parameters",
}
"""What ``/v1/models`` shows from each worker's own report."""


@router.get("/v1/models", response_model=ModelList)
async def list_models(gateway: GatewayDep, _: ApiKeyDep) -> ModelList:
    status = await gateway.backend.readiness()
    facts = gateway.backend.worker_facts()
    endpoints = gateway.backend.endpoints()
    return ModelList(
        models=[
            info.model_copy(
                update={
                    "status": status.get(name, "unknown"),
                    "endpoints": ready_endpoints(endpoints.get(name, [])),
                }
                | (facts[name].model_dump(include=REPORTED) if name in facts else {})
            )
            for name, info in gateway.models.items()
        ]
    )
