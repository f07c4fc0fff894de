"""Binary word embeddings: Isotropic Iterative Quantization (Liao et al., AAAI 2020) and its baselines, bit-packed
storage, and Hamming-distance search.

- :mod:`.quantizers`: ``iiq``, ``itq`` (Gong & Lazebnik 2011), ``pca_sign``, ``sign_binarize``, ``binarize``.
- :mod:`.codes`: ``pack_bits`` / ``unpack_bits`` (numpy.packbits layout), torch ``unpack_signs``.
- :mod:`.search`: ``hamming_topk`` (packed popcount, CPU/CUDA), ``cosine_topk`` (float reference).
- :mod:`.store`: word-vector directories (safetensors + manifest + gzip'd vocabulary file).
"""

from .codes import pack_bits, unpack_bits, unpack_signs
from .quantizers import (METHODS, BinaryCodes, binarize, choose_remove_top, iiq, isotropy, itq, itq_rotation, pca_sign,
                         sign_binarize)
from .search import cosine_topk, hamming_distances, hamming_topk, popcount64
from .store import BinaryVectorSet, load_vector_dir, save_binary_vectors, save_float_vectors

__all__ = ["METHODS", "BinaryCodes", "BinaryVectorSet", "binarize", "cosine_topk", "choose_remove_top",
           "hamming_distances", "hamming_topk", "iiq", "isotropy", "itq", "itq_rotation", "load_vector_dir",
           "pack_bits",
           "pca_sign", "popcount64", "save_binary_vectors", "save_float_vectors", "sign_binarize", "unpack_bits",
           "unpack_signs"]
