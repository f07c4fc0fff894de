"""What every compressed layer is: an ordinary ``nn.Module`` holding only compact parameters.

A compressed layer
- is rebuilt empty from ``type(layer)(**layer.spec())`` (shapes, ranks, bit widths: JSON-able), then
  filled by ``load_state_dict``; that is how model directories load without pickles. The loader goes
  through ``type(layer).from_spec(spec)``, where a layer whose spec grew a key since older manifests
  were written says what the missing key meant (packed layers: ``layout``);
- rebuilds its dense weight on request (``dense_weight()``) for checks, never in its forward pass;
- reports its own storage (``bits()``, ``num_params()``) to :mod:`lmshrink.measure`.

Two flavours share the interface: *embedding* layers map ids (...,) -> (..., D) and can also project
hidden states onto the vocabulary (``project``, used by a tied softmax); *linear* layers map
(..., in) -> (..., out) and keep their bias dense.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYER_TYPES: dict[str, type[CompressedLayer]] = {}


def register_layer(cls):
    """Class decorator: make a compressed layer loadable from a manifest by ``cls.layer_type``."""
    assert cls.layer_type not in LAYER_TYPES, f"duplicate layer type {cls.layer_type}"
    LAYER_TYPES[cls.layer_type] = cls
    return cls


def tensor_bits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


def tensor_version(t: torch.Tensor) -> int:
    """``t``'s version counter, which in-place changes bump; -1 for inference tensors, which keep none (the owners of
    derived caches drop them on ``set_factors`` / ``set_`` and on state-dict loading instead, :class:`DerivedCaches`)."""
    return -1 if torch.is_inference(t) else t._version


class DerivedCaches:
    """Mixin for modules that keep inference operands derived from their tensors between calls (``clear_caches()``
    drops them): dropped whenever the module moves or changes dtype (``.to()`` / ``.cpu()`` / ``.cuda()`` /
    ``.half()``: held, they would pin memory on the old device) and when a state dict loads (it copies in place,
    and under inference mode no version counter records that)."""

    def clear_caches(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, fn, *args, **kwargs):
        self.clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # copies and pickles start without them: they rebuild at the next call, and a sparse CSR operand cannot
        # even be deep-copied ("Cannot access storage of SparseCsrTensorImpl", stop 23 on the GPU)
        self.clear_caches()
        return super().__getstate__()


class CompressedLayer(nn.Module):
    layer_type: ClassVar[str] = ""
    flavour: ClassVar[str] = "linear"  # or "embedding"

    def spec(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict) -> CompressedLayer:
        """An empty layer from a manifest's ``spec`` (possibly written by an older lmshrink)."""
        return cls(**spec)

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The dense weight this layer stands for: (out, in) for linear, (V, D) for embedding."""
        raise NotImplementedError

    def stored_tensors(self):
        """Everything that goes to disk: parameters and persistent buffers of this layer alone."""
        yield from self.state_dict(keep_vars=True).values()

    def bits(self) -> int:
        """Theoretical storage in bits. Default: every stored tensor at its dtype's width; packed
        formats override this to count the bits they really need."""
        return sum(tensor_bits(t) for t in self.stored_tensors())

    def num_params(self) -> int:
        """Stored numbers (factor entries, non-zeros, codes): what a parameter count means here."""
        return sum(t.numel() for t in self.stored_tensors())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())

    def step_fn(self):
        """A callable that applies this linear layer many times while its weights stay the same (the T steps of
        one LSTM sequence). Layers whose forward pays a per-call set-up (unpacking k-bit codes) pay it once here
        and return a cheap closure; the default is the layer itself."""
        return self

    # The embedding flavour's projection onto the vocabulary: (..., D) -> (..., V). Methods whose
    # structure allows it override this with a fast path; the default is correct but builds W.
    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.dense_weight().to(h.dtype))


@register_layer
class TiedProjection(CompressedLayer):
    """The softmax layer of a tied model after its embedding was compressed: ``logits = E.project(h) + b``.

    It keeps only the bias; the weight is the (compressed) embedding named ``source``, bound after
    construction and deliberately *not* registered as a submodule, so nothing is stored twice.
    """

    layer_type = "tied_projection"

    def __init__(self, source: str, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.source_name, self.in_features, self.out_features = source, in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._source: list[nn.Module] = []  # a list hides the module from nn.Module's registry

    def bind(self, module: nn.Module) -> None:
        self._source[:] = [module]

    @property
    def source(self) -> nn.Module:
        assert self._source, "TiedProjection used before bind()"
        return self._source[0]

    def spec(self) -> dict:
        return {"source": self.source_name, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    def dense_weight(self) -> torch.Tensor:
        src = self.source
        return src.dense_weight() if isinstance(src, CompressedLayer) else src.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        src = self.source
        out = src.project(h) if isinstance(src, CompressedLayer) else F.linear(h, src.weight)
        return out + self.bias if self.bias is not None else out
