"""Synthetic images (``synthetic``) and the tiny models trained on them in seconds (``tiny``):
what tests, benchmarks, load tests and ``make serve``'s demo models use, never a served model's
code path."""
