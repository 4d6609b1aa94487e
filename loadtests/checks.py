"""Answer checks shared by the Locust users (kept free of Locust imports: Locust patches the
process that imports it)."""

from __future__ import annotations


def shape_problem(body: dict, model: str, top_k: int) -> str | None:
    """Why an answer is malformed, or None: one result, top-k predictions, sorted scores."""
    if body.get("model") != model:
        return f"answer for model {body.get('model')!r}, asked {model!r}"
    results = body.get("results") or []
    if len(results) != 1:
        return f"{len(results)} results for one image"
    predictions = results[0].get("predictions") or []
    if not 1 <= len(predictions) <= top_k:
        return f"{len(predictions)} predictions for top_k={top_k}"
    scores = [p["score"] for p in predictions]
    if scores != sorted(scores, reverse=True) or not all(0 <= s <= 1 for s in scores):
        return f"scores not sorted probabilities: {scores}"
    if not all(
        isinstance(p.get("label"), str) and isinstance(p.get("index"), int) for p in predictions
    ):
        return "prediction without index/label"
    return None


ARRIVAL = "ARRIVAL"
"""The request type of the open-loop lateness entries in Locust's stats: not requests, so
counts and percentiles of requests leave them out."""
