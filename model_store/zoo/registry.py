"""The attention kinds and the served model names they give: plain data, importable without
torch (the gateway's image has none).

Adding a kind is one file in ``layers/`` (a subclass of ``layers.base.Attention``) and one line
in ``ATTENTION_LAYERS``; adding a backbone is one file (its network class) and one line in
``BACKBONES``. ``<kind>_<backbone>`` is then a model every command line, the gateway and the
archive builder accept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any, TypeVar

from contract.lists import comma_separated

ATTENTION_LAYERS: dict[str, str] = {
    "se": "model_store.zoo.layers.squeeze_excite:SqueezeExcite",
    "eca": "model_store.zoo.layers.eca:EfficientChannelAttention",
    "cbam": "model_store.zoo.layers.cbam:CBAM",
    "sa": "model_store.zoo.layers.shuffle_attention:ShuffleAttention",
}
"""Attention kind -> its layer class as ``module:Class``, imported on first use."""

T = TypeVar("T")

NO_ATTENTION = "none"


@dataclass(frozen=True)
class Backbone:
    network: str
    """Its network class as ``module:Class`` (constructor, ``create``, ``arch_from_weights``,
    ``import_keys``, ``blocks``, ``conv_bn_pairs``, ``tiny_arch``: see ``resnet.ResNet``)."""
    title: str
    """How ``/v1/models`` names the architecture."""
    attention: tuple[str, ...] | None = None
    """The kinds it is served with; None: every registered kind."""


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone("model_store.zoo.resnet:ResNet", "ResNet-50"),
    "mobilenet_v2": Backbone(
        "model_store.zoo.mobilenet_v2:MobileNetV2", "MobileNetV2", attention=("eca",)
    ),
}
"""Backbone name -> what it is; served names are ``<backbone>`` and ``<kind>_<backbone>``."""
DEFAULT_BACKBONE = "resnet50"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    attention: str
    """A key of ``ATTENTION_LAYERS``, or ``NO_ATTENTION``."""
    backbone: str = DEFAULT_BACKBONE
    """A key of ``BACKBONES``."""

    @property
    def architecture(self) -> str:
        return BACKBONES[self.backbone].title


def _spec(attention: str, backbone: str = DEFAULT_BACKBONE) -> ModelSpec:
    name = backbone if attention == NO_ATTENTION else f"{attention}_{backbone}"
    return ModelSpec(name, attention, backbone)


def _every_model() -> dict[str, ModelSpec]:
    return {
        spec.name: spec
        for backbone, entry in BACKBONES.items()
        for spec in (
            _spec(kind, backbone) for kind in (NO_ATTENTION, *(entry.attention or ATTENTION_LAYERS))
        )
    }


MODELS: dict[str, ModelSpec] = _every_model()


DEFAULT_MODELS = ("se_resnet50", "eca_resnet50")
"""The pair this project exists to compare: what the gateway serves and the load tests and
TorchServe benchmark compare unless told otherwise."""


def register_attention(kind: str, layer: str) -> ModelSpec:
    """Add a kind at run time (a plug-in, a test): ``layer`` is ``"module:Class"``."""
    if not kind.isidentifier() or kind == NO_ATTENTION:
        raise ValueError(f"an attention kind is an identifier other than {NO_ATTENTION!r}")
    ATTENTION_LAYERS[kind] = layer
    MODELS.update(_every_model())
    return _spec(kind)


def unregister_attention(kind: str) -> None:
    del ATTENTION_LAYERS[kind]
    for name in [name for name, spec in MODELS.items() if spec.attention == kind]:
        del MODELS[name]


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


@cache
def plugin_class(path: str, base: type[T]) -> type[T]:
    """The class a registry line names (``"module:Class"``), imported on first use and checked
    to be a ``base``: how attention kinds and runtimes are plugged in."""
    module, _, name = path.partition(":")
    found = getattr(import_module(module), name)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise TypeError(f"{path} is not a {base.__name__} subclass")
    return found


def backbone_network(name: str) -> type[Any]:
    """The network class of backbone ``name`` (imports torch: not for the gateway)."""
    from torch import nn

    return plugin_class(BACKBONES[name].network, nn.Module)
