"""The worker's memory ceiling, measured (bench.memory) with a generous margin: the worst batch
the limits allow costs a bounded number of bytes per allowed pixel above the loaded model,
whatever the batch size: the images decoded at once hold at most one largest image's pixels
between them, each is reduced to its crop at once, and a batch has a pixel budget."""

from __future__ import annotations

import pytest

from bench.memory import measure, random_weights
from contract.images import ImageLimits

pytestmark = pytest.mark.slow

MAX_PIXELS = 12_000_000
BYTES_PER_PIXEL_CEILING = 12  # measured 3.7-8.6 at 40 M pixels (bench/README.md)


@pytest.mark.parametrize("case", ["palette PNG + transparency", "RGBA PNG", "RGB JPEG"])
def test_worst_allowed_batch_stays_under_the_ceiling(tmp_path, case):
    limits = ImageLimits(MAX_PIXELS, max_batch_pixels=2 * MAX_PIXELS + 1)
    weights = random_weights("eca_resnet50", tmp_path, tiny=True)
    row = measure(case, model="eca_resnet50", weights=weights, limits=limits, batch=8)
    assert row["decoded"] == 2 and row["refused_over_budget"] == 6
    assert row["upload_kib"] < 1024  # a small upload ...
    assert 0 < row["image_mib"] * 2**20 <= BYTES_PER_PIXEL_CEILING * MAX_PIXELS  # ... bounded
