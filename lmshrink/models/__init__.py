"""Model kinds lmshrink can build from a manifest's ``architecture`` entry."""

from __future__ import annotations

import torch.nn as nn

from ..errors import LmshrinkError
from .lstm_lm import PRESETS, GateAwareLSTMLayer, LSTMLanguageModel, build_from_preset

MODEL_KINDS: dict[str, type[nn.Module]] = {"lstm_lm": LSTMLanguageModel}
from .classifier import CNNClassifier, DANClassifier, LSTMClassifier  # noqa: E402  (text classifiers)
MODEL_KINDS[LSTMClassifier.kind] = LSTMClassifier
MODEL_KINDS[DANClassifier.kind] = DANClassifier
MODEL_KINDS[CNNClassifier.kind] = CNNClassifier


def register_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Register a model class under ``cls.kind``; it must accept ``**arch`` minus ``kind`` and expose ``arch()``."""
    MODEL_KINDS[cls.kind] = cls
    return cls


def build_model(arch: dict) -> nn.Module:
    kind = arch.get("kind")
    if kind not in MODEL_KINDS:
        raise LmshrinkError(f"unknown model kind {kind!r} in manifest; known: {', '.join(sorted(MODEL_KINDS))}")
    kwargs = {k: v for k, v in arch.items() if k != "kind"}
    try:
        return MODEL_KINDS[kind](**kwargs)
    except TypeError as e:
        raise LmshrinkError(f"manifest architecture does not fit model kind {kind!r}: {e}") from None


__all__ = ["MODEL_KINDS", "PRESETS", "GateAwareLSTMLayer", "LSTMLanguageModel", "build_from_preset", "build_model", "register_model"]
