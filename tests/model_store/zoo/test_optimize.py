"""Folding, early squeeze, channels_last and compiling must not change the answers."""

from __future__ import annotations

import pytest
import torch

from model_store import MODELS, create_model, fold_batchnorm, optimize_for_inference
from model_store.zoo.models import gates_from_mean
from model_store.zoo.optimize import enable_inner_squeeze

from .test_checkpoint import randomized

# float32 through ~20 folded layers: relative error ~1e-6 measured; the bound leaves 10x slack.
RTOL, ATOL = 1e-4, 1e-4


def reference_logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fold_batchnorm_is_exact(name):
    model = randomized(name)
    x = torch.randn(2, 3, 64, 64)
    expected = reference_logits(model, x)
    fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(reference_logits(model, x), expected, rtol=RTOL, atol=ATOL)


MEAN_GATED = sorted(name for name in MODELS if gates_from_mean(name))
OTHERS = sorted(name for name in MODELS if not gates_from_mean(name))


def test_the_registry_has_both_kinds_of_gate():
    assert MEAN_GATED and OTHERS


@pytest.mark.parametrize("name", MEAN_GATED)
@pytest.mark.parametrize("folded", [False, True])
def test_inner_squeeze_is_exact(name, folded):
    """mean(bn3(conv3(h))) == bn3(conv3(mean(h))) in eval mode, folded or not (PERF_NOTES lead)."""
    model = randomized(name).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    expected = reference_logits(model, x)
    if folded:
        fold_batchnorm(model)
    assert enable_inner_squeeze(model) == 4
    torch.testing.assert_close(reference_logits(model, x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", OTHERS)
def test_inner_squeeze_skips_attention_that_is_not_a_mean(name):
    assert enable_inner_squeeze(randomized(name)) == 0


def test_fold_batchnorm_refuses_training_mode():
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(create_model("resnet50", layers=(1, 1, 1, 1)).train())


def test_optimize_leaves_the_callers_model_alone():
    model = randomized("eca_resnet50")
    optimize_for_inference(model, compile=False)
    assert isinstance(model.layer1[0].bn1, torch.nn.BatchNorm2d)
    assert not model.layer1[0].squeeze_inner


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eager_optimised_matches(name):
    model = randomized(name)
    x = torch.randn(3, 3, 64, 64)
    optimised = optimize_for_inference(model, compile=False)
    torch.testing.assert_close(optimised(x), reference_logits(model, x), rtol=RTOL, atol=ATOL)


COMPILED = ["eca_resnet50", "cbam_resnet50", "eca_mobilenet_v2"]
"""One model per path through the optimiser (a compile is ~20 s on 2 cores): a gate from a
mean (squeezed early), a gate that is not (CBAM: left in place), and the other backbone; the
eager checks above cover every model."""


def test_every_path_through_the_optimiser_is_compiled():
    kinds = {name: gates_from_mean(name) for name in COMPILED}
    assert set(kinds.values()) == {True, False}
    assert {create_model(name).__class__ for name in COMPILED} == {
        create_model(name).__class__ for name in MODELS
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_matches_eager(name):
    """Real inductor compile on CPU (freezing on); the answers must not move."""
    model = randomized(name)
    x = torch.randn(2, 3, 64, 64)
    optimised = optimize_for_inference(model, compile=True)
    result = optimised(x)
    assert optimised.compiled, optimised.compile_error
    torch.testing.assert_close(result, reference_logits(model, x), rtol=RTOL, atol=ATOL)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    model = randomized("eca_resnet50")
    optimised = optimize_for_inference(model, compile=True)

    def broken_backend(_):
        raise RuntimeError("backend cannot compile this")

    monkeypatch.setattr(optimised, "_compiled", broken_backend)
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="torch.compile failed, running eager"):
        result = optimised(x)
    assert not optimised.compiled
    assert "backend cannot compile this" in optimised.compile_error
    torch.testing.assert_close(result, reference_logits(model, x), rtol=RTOL, atol=ATOL)


def test_input_errors_still_raise_after_fallback():
    optimised = optimize_for_inference(randomized("resnet50"), compile=False)
    with pytest.raises(RuntimeError):
        optimised(torch.randn(1, 5, 64, 64))


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        optimize_for_inference(randomized("resnet50"), mode="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_close_to_fp32():
    model = randomized("eca_resnet50")
    x = torch.randn(4, 3, 64, 64)
    optimised = optimize_for_inference(model, device="cuda", compile=False)
    torch.testing.assert_close(optimised(x).cpu(), reference_logits(model, x), rtol=5e-2, atol=5e-2)


@pytest.mark.slow
def test_recompile_limit_is_reported_not_silently_eager(monkeypatch):
    """Past dynamo's graph limit the model must say it runs eager, not claim to be compiled."""
    import torch._dynamo.config as dynamo_config

    from model_store.zoo import optimize as optimize_module

    monkeypatch.setattr(optimize_module, "RECOMPILE_LIMIT", 1)
    torch._dynamo.reset()
    # dynamo's own patch, not monkeypatch: pytest's undo deletes an attribute that is not in
    # the module's __dict__, and a deleted dynamo setting reads as missing from then on
    with dynamo_config.patch(recompile_limit=1):
        optimised = optimize_for_inference(randomized("resnet50"), compile=True)
        optimised(torch.randn(1, 3, 64, 64))
        assert optimised.compiled
        with pytest.warns(UserWarning, match="torch.compile failed"):
            optimised(torch.randn(2, 3, 64, 64))  # a second graph: over the limit of 1
    assert not optimised.compiled
    assert (
        "recompile" in optimised.compile_error.lower() or "limit" in optimised.compile_error.lower()
    )
    torch._dynamo.reset()
