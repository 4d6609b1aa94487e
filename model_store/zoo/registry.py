"""The attention kinds and the served model names they give: plain data, importable without
torch (the gateway's image has none).

Adding a kind is one file in ``layers/`` (a subclass of ``layers.base.Attention``) and one line
in ``ATTENTION_LAYERS``; ``<kind>_resnet50`` is then a model every command line, the gateway and
the archive builder accept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from contract.lists import comma_separated

ATTENTION_LAYERS: dict[str, str] = {
    "se": "model_store.zoo.layers.squeeze_excite:SqueezeExcite",
    "eca": "model_store.zoo.layers.eca:EfficientChannelAttention",
    "cbam": "model_store.zoo.layers.cbam:CBAM",
    "sa": "model_store.zoo.layers.shuffle_attention:ShuffleAttention",
}
"""Attention kind -> its layer class as ``module:Class``, imported on first use."""

NO_ATTENTION = "none"
BACKBONE = "resnet50"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    attention: str
    """A key of ``ATTENTION_LAYERS``, or ``NO_ATTENTION``."""


def _spec(attention: str) -> ModelSpec:
    name = BACKBONE if attention == NO_ATTENTION else f"{attention}_{BACKBONE}"
    return ModelSpec(name, attention)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in map(_spec, [NO_ATTENTION, *ATTENTION_LAYERS])
}


DEFAULT_MODELS = ("se_resnet50", "eca_resnet50")
"""The pair this project exists to compare: what the gateway serves and the load tests and
TorchServe benchmark compare unless told otherwise."""


def register_attention(kind: str, layer: str) -> ModelSpec:
    """Add a kind at run time (a plug-in, a test): ``layer`` is ``"module:Class"``."""
    if not kind.isidentifier() or kind == NO_ATTENTION:
        raise ValueError(f"an attention kind is an identifier other than {NO_ATTENTION!r}")
    ATTENTION_LAYERS[kind] = layer
    spec = _spec(kind)
    MODELS[spec.name] = spec
    return spec


def unregister_attention(kind: str) -> None:
    del ATTENTION_LAYERS[kind]
    del MODELS[_spec(kind).name]


def parse_model_names(value: str) -> list[str]:
    """``'all'`` or a comma list of registered names: the ``--models`` of every command line."""
    names = list(MODELS) if value == "all" else comma_separated(value)
    if unknown := [n for n in names if n not in MODELS]:
        raise argparse.ArgumentTypeError(
            f"unknown models {unknown}; choose from {', '.join(MODELS)} or 'all'"
        )
    return names


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
