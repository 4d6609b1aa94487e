"""The online batch cost model: what the deadline-aware batcher predicts with."""

from __future__ import annotations

import pytest

from service.cost_model import BatchCostModel


def test_nothing_is_predicted_before_the_first_observation():
    model = BatchCostModel()
    assert model.predict(4) is None
    assert model.predict(0) == 0.0


def test_a_size_seen_is_predicted_by_its_smoothed_mean():
    model = BatchCostModel(smoothing=0.5)
    model.observe(4, 1.0)
    assert model.predict(4) == 1.0
    model.observe(4, 2.0)
    assert model.predict(4) == pytest.approx(1.5)  # half way to the newest


def test_one_size_seen_scales_in_proportion():
    model = BatchCostModel()
    model.observe(2, 0.2)
    assert model.predict(8) == pytest.approx(0.8)
    assert model.predict(1) == pytest.approx(0.1)


def test_unseen_sizes_follow_the_line_through_the_sizes_seen():
    model = BatchCostModel()
    for size in (1, 2, 8):
        model.observe(size, 0.03 + 0.02 * size)  # fixed cost 30 ms, 20 ms per item
    assert model.predict(4) == pytest.approx(0.11)
    assert model.predict(16) == pytest.approx(0.35)


def test_noise_never_makes_a_bigger_batch_predict_faster():
    model = BatchCostModel()
    model.observe(1, 0.5)
    model.observe(8, 0.1)
    assert model.predict(16) >= model.predict(2) >= 0


def test_the_bound_sits_above_the_mean_by_the_spread_of_what_was_seen():
    steady, jumpy = BatchCostModel(), BatchCostModel()
    for seconds in [0.2] * 20:
        steady.observe(8, seconds)
    for seconds in [0.1, 0.3] * 10:
        jumpy.observe(8, seconds)
    assert steady.bound(8) == steady.predict(8) == pytest.approx(0.2)  # no spread
    assert jumpy.predict(8) == pytest.approx(0.2, abs=0.03)
    assert jumpy.bound(8) > jumpy.predict(8) + 0.1  # about two deviations of 0.1 above
    assert jumpy.bound(4) is not None and jumpy.bound(4) > jumpy.predict(4)


def test_bad_smoothing_is_refused():
    with pytest.raises(ValueError, match="smoothing"):
        BatchCostModel(smoothing=0)


def test_a_lone_outlier_is_not_learnt_and_a_confirmed_one_is():
    """One batch that waited out a worker's restart must not make the next request look
    unmeetable; a backend that really became that slow is believed at its second batch."""
    model = BatchCostModel()
    for _ in range(5):
        model.observe(4, 0.1)
    model.observe(4, 5.0)  # waited out a restart
    assert model.predict(4) == pytest.approx(0.1)
    model.observe(4, 0.1)  # the next batch is quick again: the outlier is dropped
    model.observe(4, 0.1)
    assert model.predict(4) == pytest.approx(0.1)
    model.observe(4, 5.0)
    model.observe(4, 5.0)  # slow twice in a row: both are learnt
    assert model.predict(4) > 1.0


def test_heavy_photos_teach_their_decoding_not_every_batch_of_their_size():
    """One client's 40 MP photos (1 s of decoding each) taught the model that a batch of one
    takes 1.1 s, and everyone's small photos were refused as unmeetable under a 0.5 s deadline.
    Decoding, as the worker reports it, is learnt per pixel; the rest per size."""
    model = BatchCostModel()
    for _ in range(10):
        model.observe(1, 1.1, pixels=40_000_000, decode_s=1.0)
    assert model.bound(1, pixels=300_000) == pytest.approx(0.1 + 300_000 * 1.0 / 40e6)
    assert model.bound(1, pixels=40_000_000) == pytest.approx(1.1)
    assert model.predict(1) == pytest.approx(0.1)  # pixels unknown: the rest alone


def test_without_the_workers_decode_time_the_whole_batch_is_learnt():
    model = BatchCostModel()
    model.observe(2, 0.3, pixels=1_000_000)
    assert model.decode_s_per_pixel is None and model.bound(2, pixels=10**9) == 0.3
