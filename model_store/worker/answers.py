"""A worker's answer for one input, as ``contract.answers`` shapes it: its top-k with labels
(and its full softmax when asked), or the error it alone met."""

from __future__ import annotations

import torch

from contract.answers import Failure, Predictions, Result
from contract.errors import NON_FINITE_OUTPUT
from contract.images import ImageError
from contract.protocol import PROBABILITIES_FIELD

NON_FINITE = ImageError(
    NON_FINITE_OUTPUT, "the model's output for this input is not a number (NaN or infinity)"
)


def failure(exc: ImageError) -> Failure:
    return {"error": {"code": exc.code, "message": str(exc)}}


def answer(row: torch.Tensor, top_k: int, probabilities: bool, labels: list[str]) -> Result:
    """One input's answer from its softmax row: a non-finite row fails this input alone
    (the other rows of the batch are its neighbours')."""
    if not torch.isfinite(row).all():
        return failure(NON_FINITE)
    scores, indices = row.topk(min(top_k, len(labels)))
    predictions: Predictions = {
        "predictions": [
            {"index": int(i), "label": labels[int(i)], "score": float(s)}
            for s, i in zip(scores, indices, strict=True)
        ]
    }
    if probabilities:
        predictions[PROBABILITIES_FIELD] = row.tolist()  # type: ignore[literal-required]
    return predictions
