"""Channel-attention modules, one file per kind, picked by name with ``create_attn``; the kinds
are registered in ``model_store.zoo.registry``."""

from .base import Attention, MeanGateAttention
from .create_attn import attention_layer, attention_layers, create_attn

__all__ = ["Attention", "MeanGateAttention", "attention_layer", "attention_layers", "create_attn"]
