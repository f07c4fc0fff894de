"""Compressed ``nn.Module``s that methods produce. Importing this package registers every layer type."""

from .base import LAYER_TYPES, CompressedLayer, TiedProjection, register_layer, tensor_bits
from .low_rank import LowRankEmbedding, LowRankLinear
from . import hmd, kronecker, tensor_train  # noqa: F401,E402  (recurrent layers: HMDLinear, (Doped)KroneckerLinear, TTLinear)
from . import block_low_rank, packing, quantized, sparse  # noqa: F401,E402  (vocabulary layers: GroupReduce, pruning, quantization)

__all__ = ["LAYER_TYPES", "CompressedLayer", "LowRankEmbedding", "LowRankLinear", "TiedProjection",
           "register_layer", "tensor_bits"]
from . import binary  # noqa: F401,E402  (BinaryEmbedding: packed +-1 codes, IIQ)
