"""Sentence classifiers over a (pretrained) word embedding: LSTM, deep averaging network, Kim's CNN.

The LSTM and DAN are the two networks of Acharya et al. 2019 ("Online Embedding Compression for Text
Classification using Low Rank Matrix Factorization", Sec. 4; their code: an LSTM of 150 units whose
outputs are averaged over time, then a softmax layer; a DAN of Iyyer et al. 2015 averaging the word
vectors, then ReLU layers). The CNN is Kim 2014's (filter widths 3, 4, 5 with 100 maps each, max over
time, dropout 0.5).

Every model maps ids (B, T), padded with id 0 at the end, to logits (B, C). Padding is masked: averages
and maxima run over the real tokens only, so a sentence's prediction does not depend on its batch.
The embedding is ``encoder`` (an ``nn.Embedding`` the compression plans can replace by any embedding
layer, e.g. SVD's :class:`~lmshrink.layers.LowRankEmbedding`); ``vocab_modules = ("encoder",)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import check
from .lstm_lm import GateAwareLSTMLayer

PAD_ID = 0


class _Classifier(nn.Module):
    kind = ""
    vocab_modules = ("encoder",)

    def _base(self, vocab_size: int, num_classes: int, emb_dim: int, dropout: float) -> None:
        check(vocab_size > 2 and num_classes >= 2 and emb_dim >= 1, "classifier: need vocab_size > 2, num_classes >= 2, emb_dim >= 1")
        check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
        self.encoder = nn.Embedding(vocab_size, emb_dim)
        self.drop = nn.Dropout(dropout)

    def arch(self) -> dict:
        return {"kind": self.kind, **self.config}

    @staticmethod
    def _mask(ids: torch.Tensor) -> torch.Tensor:
        return (ids != PAD_ID).float()  # (B, T)

    @torch.no_grad()
    def load_embedding(self, E) -> None:
        """Copy a (V, d) matrix into the dense ``encoder``."""
        E = torch.as_tensor(E, dtype=self.encoder.weight.dtype)
        check(tuple(E.shape) == tuple(self.encoder.weight.shape),
              f"embedding matrix has shape {tuple(E.shape)}, the model expects {tuple(self.encoder.weight.shape)}")
        self.encoder.weight.copy_(E)


class LSTMClassifier(_Classifier):
    """embedding -> LSTM (``hidden`` units) -> mean of outputs over real tokens -> dropout -> linear."""

    kind = "lstm_cls"

    def __init__(self, vocab_size: int, num_classes: int, emb_dim: int = 50, hidden: int = 150, dropout: float = 0.5):
        super().__init__()
        self._base(vocab_size, num_classes, emb_dim, dropout)
        self.config = dict(vocab_size=vocab_size, num_classes=num_classes, emb_dim=emb_dim, hidden=hidden, dropout=dropout)
        self.rnn = nn.Module()
        self.rnn.layers = nn.ModuleList([GateAwareLSTMLayer(emb_dim, hidden)])
        self.out = nn.Linear(hidden, num_classes)
        k = hidden ** -0.5
        for p in self.rnn.parameters():  # torch.nn.LSTM's default init
            nn.init.uniform_(p, -k, k)
        with torch.no_grad():  # forget-gate bias 1 (the paper's LSTMCell(forget_bias=1.0)); gates are i, f, g, o
            self.rnn.layers[0].ih.bias[hidden:2 * hidden].fill_(1.0)
            self.rnn.layers[0].hh.bias[hidden:2 * hidden].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids (B, T) -> logits (B, C)
        mask = self._mask(ids)
        x = self.encoder(ids).transpose(0, 1)  # (T, B, E)
        H = self.config["hidden"]
        B = ids.size(0)
        state = (x.new_zeros(B, H), x.new_zeros(B, H))
        y, _ = self.rnn.layers[0](x, state)  # (T, B, H); padding sits after each sentence, so it cannot leak back
        y = y.transpose(0, 1)  # (B, T, H)
        pooled = (y * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # (B, H)
        return self.out(self.drop(pooled))


class DANClassifier(_Classifier):
    """Deep averaging network (Iyyer et al. 2015): mean of word vectors -> [linear, ReLU, dropout] x L -> linear."""

    kind = "dan_cls"

    def __init__(self, vocab_size: int, num_classes: int, emb_dim: int = 50, hidden: int = 150, layers: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        self._base(vocab_size, num_classes, emb_dim, dropout)
        check(layers >= 1 and hidden >= 1, "DAN: layers and hidden must be positive")
        self.config = dict(vocab_size=vocab_size, num_classes=num_classes, emb_dim=emb_dim, hidden=hidden,
                           layers=layers, dropout=dropout)
        self.hidden = nn.ModuleList(nn.Linear(emb_dim if k == 0 else hidden, hidden) for k in range(layers))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = self._mask(ids)
        e = self.encoder(ids)  # (B, T, E)
        h = (e * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)  # (B, E)
        for lin in self.hidden:
            h = self.drop(F.relu(lin(h)))
        return self.out(h)


class CNNClassifier(_Classifier):
    """Kim 2014: convolutions of widths ``widths`` (``maps`` each) over the word vectors, ReLU, max over real
    positions, dropout, linear."""

    kind = "cnn_cls"

    def __init__(self, vocab_size: int, num_classes: int, emb_dim: int = 50, maps: int = 100,
                 widths: tuple[int, ...] | list[int] = (3, 4, 5), dropout: float = 0.5):
        super().__init__()
        self._base(vocab_size, num_classes, emb_dim, dropout)
        widths = [int(w) for w in widths]
        check(widths and all(w >= 1 for w in widths) and maps >= 1, "CNN: widths and maps must be positive")
        self.config = dict(vocab_size=vocab_size, num_classes=num_classes, emb_dim=emb_dim, maps=maps,
                           widths=widths, dropout=dropout)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, maps, w) for w in widths)
        self.out = nn.Linear(maps * len(widths), num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wmax = max(self.config["widths"])
        if ids.size(1) < wmax:  # short batches: pad so every filter fits at least once
            ids = F.pad(ids, (0, wmax - ids.size(1)), value=PAD_ID)
        mask = self._mask(ids)  # (B, T)
        x = self.encoder(ids).transpose(1, 2)  # (B, E, T)
        lengths = mask.sum(1).clamp_min(1.0)  # (B,)
        feats = []
        for conv, w in zip(self.convs, self.config["widths"]):
            c = F.relu(conv(x))  # (B, maps, T - w + 1)
            # a window is real when it starts at a real token (windows over trailing padding are masked; a sentence
            # shorter than w keeps its first window)
            pos = torch.arange(c.size(2), device=ids.device)[None, :]  # (1, T')
            valid = pos < (lengths[:, None] - w + 1).clamp_min(1.0)  # (B, T')
            feats.append(c.masked_fill(~valid[:, None, :], float("-inf")).amax(2))  # (B, maps)
        return self.out(self.drop(torch.cat(feats, 1)))


CLASSIFIERS = {"lstm": LSTMClassifier, "dan": DANClassifier, "cnn": CNNClassifier}


def build_classifier(name: str, vocab_size: int, num_classes: int, emb_dim: int, **kw) -> _Classifier:
    check(name in CLASSIFIERS, f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](vocab_size, num_classes, emb_dim, **kw)
