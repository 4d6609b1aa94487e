"""The served model names and their attention kinds: plain data, importable without torch (the
gateway's image has none)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    attention: str
    paper: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet50", "none", "He et al., Deep Residual Learning, CVPR 2016"),
        ModelSpec("se_resnet50", "se", "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"),
        ModelSpec("eca_resnet50", "eca", "Wang et al., ECA-Net, CVPR 2020"),
        ModelSpec("cbam_resnet50", "cbam", "Woo et al., CBAM, ECCV 2018"),
        ModelSpec("sa_resnet50", "sa", "Zhang and Yang, SA-Net, ICASSP 2021"),
    )
}


def parse_model_names(value: str) -> list[str]:
    """``'all'`` or a comma list of registered names: the ``--models`` of every command line."""
    names = list(MODELS) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
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
