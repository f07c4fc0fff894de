"""Compressed ``nn.Module``s that methods produce. Importing this package registers every layer type."""

from .base import LAYER_TYPES, CompressedLayer, TiedProjection, register_layer, tensor_bits
from .low_rank import LowRankEmbedding, LowRankLinear

__all__ = ["LAYER_TYPES", "CompressedLayer", "LowRankEmbedding", "LowRankLinear", "TiedProjection",
           "register_layer", "tensor_bits"]
