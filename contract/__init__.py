"""What the gateway and the TorchServe workers agree on, declared once and imported by both
tiers: the worker request's fields and the answer's shape (``protocol``, ``answers``), the limits
and defaults both hold to, what an upload may be (``images``: refused from its header, no pixel
decoded), the codes a worker reports per input with the HTTP status each becomes (``errors``),
TorchServe's key authorization as every client meets it (``keys``), and how our command lines
and environment variables write lists (``lists``).

Plain Python and Pillow: no torch (the gateway's image has none), no pydantic (the worker's has
none), and nothing from ``service`` or ``model_store`` (it is imported by them, never the other
way round; ``tests/contract/test_contract.py`` holds it to that).
"""
