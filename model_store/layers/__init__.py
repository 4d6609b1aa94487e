"""Channel-attention modules, one file per kind, picked by name with ``create_attn``."""

from .cbam import CBAM
from .create_attn import ATTENTION_LAYERS, create_attn
from .eca import EfficientChannelAttention, adaptive_kernel_size
from .shuffle_attention import ShuffleAttention
from .squeeze_excite import SqueezeExcite

__all__ = [
    "ATTENTION_LAYERS",
    "CBAM",
    "EfficientChannelAttention",
    "ShuffleAttention",
    "SqueezeExcite",
    "adaptive_kernel_size",
    "create_attn",
]
