"""LSTM language model of Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization",
with a gate-aware, pluggable LSTM.

Each LSTM layer holds its input-to-hidden map ``ih`` (input -> 4H) and hidden-to-hidden map ``hh``
(H -> 4H) as ordinary modules, gate blocks in PyTorch's order (i, f, g, o). A compressor may replace
either with any module of the same in/out shape (low rank, Kronecker, tensor-train, sparse, quantized).
While both maps are dense ``nn.Linear`` the layer calls the fused (cuDNN on GPU) LSTM kernel with their
weights; otherwise it projects all inputs with one call of ``ih`` and runs only the recurrence in a loop.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmshrinkError, check

NUM_GATES = 4  # i, f, g, o: the row blocks of ih/hh outputs, in torch.nn.LSTM's order


def check_cell_clip(value, name: str = "cell_clip") -> None:
    """``value`` is a clamp for the carried cell state (``LSTMLanguageModel.cell_clip``): a positive finite number,
    or None for none. ``name`` is how the caller's user spelled it (``--cell-clip`` on the command line)."""
    check(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                            and value > 0),
          f"{name} must be a positive number, got {value!r}")


@dataclass
class Preset:
    """Architecture and training recipe (TensorFlow PTB tutorial's configs of Zaremba et al.)."""

    hidden: int
    layers: int
    dropout: float  # 1 - keep_prob
    init_scale: float  # uniform(-s, s) for every weight
    bptt: int
    batch_size: int
    lr: float
    lr_decay: float
    decay_after: int  # epochs at full lr ("max_epoch")
    epochs: int  # "max_max_epoch"
    max_grad_norm: float
    tie_weights: bool = False


PRESETS: dict[str, Preset] = {
    "tiny": Preset(32, 2, 0.0, 0.1, 10, 8, 1.0, 0.5, 1, 2, 5.0),
    "small": Preset(200, 2, 0.0, 0.1, 20, 20, 1.0, 0.5, 4, 13, 5.0),
    "medium": Preset(650, 2, 0.5, 0.05, 35, 20, 1.0, 0.8, 6, 39, 5.0),
    "large": Preset(1500, 2, 0.65, 0.04, 35, 20, 1.0, 1 / 1.15, 14, 55, 10.0),
}


# At inference on CUDA a compressed LSTM layer rebuilds its dense weights and runs cuDNN once a call has at least this
# many time steps; shorter calls step through the compact maps. Measured on an H100 (PTB-medium shape, 25x, batch 64,
# eager; benchmarks/results/recurrent_speed_gpu_steps.md): at 1 and 2 steps per call the compact maps are as fast or
# faster for every method but TT (LMF 1.79x dense against 0.98x rebuilt at 1 step), at 4 steps rebuilding wins for
# all but LMF, at 8 and 35 for all (35 steps: compact 0.09-0.32x dense, rebuilt 0.74-0.90x). The rebuilt weight
# lives only during the call; the layer keeps holding its compact parameters alone.
CUDA_REBUILD_MIN_STEPS = 4


def rebuild_at_inference(device: torch.device, steps: int) -> bool:
    """The "auto" serving path of a compressed LSTM layer in eval mode: rebuild dense weights for the fused kernel
    (True) or step through the compact maps (False). CPU: always the compact maps (faster at batch 1 for every
    method but TT, ``recurrent_speed_cpu.md``)."""
    return device.type == "cuda" and steps >= CUDA_REBUILD_MIN_STEPS


class GateAwareLSTMLayer(nn.Module):
    """One LSTM layer whose two maps are replaceable modules.

    ``gates = ih(x_t) + hh(h_{t-1})`` split into (i, f, g, o);  ``c_t = f*c + i*g``, ``h_t = o*tanh(c_t)``.
    The biases live in ``ih`` and ``hh`` as in ``nn.LSTM`` (b_ih, b_hh), so dense weights map one to one.
    """

    num_gates = NUM_GATES

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.ih = nn.Linear(input_size, NUM_GATES * hidden_size)
        self.hh = nn.Linear(hidden_size, NUM_GATES * hidden_size)
        self.force_loop = False  # benchmarks set this to time the pluggable path on dense maps
        # inference path of compressed maps: None "auto" (rebuild_at_inference), True rebuilt dense weights, False the
        # compact maps step by step; set for a block by ``fused_lstm``
        self.prefer_fused: bool | None = None

    def _fused_weights(self, x: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """Weights for the fused kernel, or None to run the pluggable loop; ``x`` (T, B, I) is the call's input.

        Dense maps always go fused. Compressed maps go fused while *training*: their dense weight is
        rebuilt from the compact factors once per forward (differentiable, so gradients reach the
        factors) and the whole sequence runs in cuDNN; that costs one small product per step instead
        of T small kernels per step. At inference ``prefer_fused`` decides: True rebuilds (perplexity
        evaluation: the same function, computed faster), False applies the compact maps step by step (what
        the speed benchmarks' compact rows time), None (the default) picks by :func:`rebuild_at_inference`
        from ``x``'s device and length -- without ``x``, the compact maps.
        """
        if self.force_loop:
            return None
        dense = type(self.ih) is nn.Linear and type(self.hh) is nn.Linear
        auto = self.prefer_fused is None and x is not None and rebuild_at_inference(x.device, x.size(0))
        rebuild = self.training or bool(self.prefer_fused) or auto
        if not dense and not (rebuild and hasattr(self.ih, "dense_weight") and hasattr(self.hh, "dense_weight")):
            return None
        w_ih = self.ih.weight if type(self.ih) is nn.Linear else self.ih.dense_weight()
        w_hh = self.hh.weight if type(self.hh) is nn.Linear else self.hh.dense_weight()
        zeros = w_ih.new_zeros(w_ih.shape[0])
        b_ih = self.ih.bias if getattr(self.ih, "bias", None) is not None else zeros
        b_hh = self.hh.bias if getattr(self.hh, "bias", None) is not None else zeros
        return [w_ih, w_hh, b_ih, b_hh]

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        # x: (T, B, I); state: h, c each (B, H)
        h, c = state
        # torch.lstm does not check the state against the input on CPU: a wrong batch corrupts the heap (seen in stop 22)
        if not (x.dim() == 3 and h.shape == c.shape == (x.size(1), self.hidden_size)):  # the message only when it fails
            raise LmshrinkError(f"LSTM layer: input (T, B, I) {tuple(x.shape)} needs a state of (B, H) = "
                                f"({x.size(1) if x.dim() == 3 else '?'}, {self.hidden_size}), got h {tuple(h.shape)} "
                                f"and c {tuple(c.shape)}")
        weights = self._fused_weights(x)
        if weights is not None:
            # torch.lstm is no autocast op and wants one dtype throughout, but under autocast a rebuilt weight comes out
            # bfloat16 (einsum, mm) beside float32 biases, input and state (stop 22: Kronecker retraining on the GPU):
            # run in the widest of them, float32 there, as a dense layer does
            dt = x.dtype
            for w in weights:
                dt = torch.promote_types(dt, w.dtype)
            # cuDNN flattens the weights with view(): a rebuilt weight in another layout (seen on an H100 at inference,
            # stop 24; the CPU kernel takes any strides) fails there, so hand it contiguous copies (no-ops otherwise)
            weights = [w.to(dt).contiguous() for w in weights]
            x, h, c = x.to(dt).contiguous(), h.to(dt).contiguous(), c.to(dt).contiguous()
            out, hn, cn = torch.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)), weights, True, 1, 0.0, self.training, False, False)
            return out, (hn.squeeze(0), cn.squeeze(0))
        T, B, _ = x.shape
        x_proj = self.ih(x.reshape(T * B, -1)).view(T, B, -1)  # (T, B, 4H): all inputs in one call
        hh = self.hh.step_fn() if hasattr(self.hh, "step_fn") else self.hh  # per-sequence set-up paid once
        outs = []
        for t in range(T):
            gates = x_proj[t] + hh(h)  # (B, 4H)
            i, f, g, o = gates.chunk(NUM_GATES, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h, c)


@contextmanager
def fused_lstm(model: nn.Module, enabled: bool | None = True):
    """Within this block every gate-aware LSTM layer of ``model`` runs the fused kernel on dense weights
    rebuilt from its compact maps (once per call, i.e. per BPTT window), also in eval mode; ``enabled=False``
    forces the compact maps step by step instead, ``None`` leaves the layers' "auto" choice
    (:func:`rebuild_at_inference`).

    Why: perplexity evaluation of a compressed LSTM through the per-time-step loop launches ~30 small
    kernels per step; on a shared GPU that made evaluation, not retraining, the slowest part of a run.
    The rebuilt weight is the compressed layer's own function (``dense_weight``), so the perplexity is
    the compressed model's.
    """
    layers = [m for m in model.modules() if isinstance(m, GateAwareLSTMLayer)]
    old = [m.prefer_fused for m in layers]
    try:
        for m in layers:
            m.prefer_fused = enabled
        yield model
    finally:
        for m, o in zip(layers, old):
            m.prefer_fused = o


class LSTMLanguageModel(nn.Module):
    """embedding -> dropout -> [LSTM layer -> dropout] x L -> linear softmax (optionally tied).

    Module names are the plan names: ``encoder`` (embedding), ``rnn.layers.K.ih`` / ``rnn.layers.K.hh``,
    ``decoder`` (softmax). Tying shares one ``nn.Parameter`` between ``encoder`` and ``decoder``.

    ``cell_clip`` (default off) clamps the cell state carried *into* each call to [-cell_clip, cell_clip],
    so between BPTT windows, the same on the fused and the step-by-step path. Why: a unit whose forget gate
    saturates at 1 while its input keeps adding +-1 counts tokens for as long as the state is carried. Stop 18
    found one in a 25x tensor-train PTB-large model: on one validation stream its cells reached |c| = 3052
    (the dense model's never pass 36), and that stream's perplexity was 35,887 while the others stayed at
    138-190 (``benchmarks/results/eval_windows_large_tt.json``). The clamp bounds how long such a unit stays
    stuck after its input turns; set above the cell range a model uses, it changes nothing else.
    """

    kind = "lstm_lm"

    def __init__(self, vocab_size: int, hidden: int = 200, layers: int = 2, dropout: float = 0.0,
                 tie_weights: bool = False, emb_size: int | None = None, init_scale: float = 0.1,
                 cell_clip: float | None = None):
        super().__init__()
        check(vocab_size > 0 and hidden > 0 and layers > 0, "vocab_size, hidden and layers must be positive")
        check_cell_clip(cell_clip)
        check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
        emb_size = emb_size or hidden
        check(not tie_weights or emb_size == hidden, "tied weights need emb_size == hidden")
        self.config = dict(vocab_size=vocab_size, hidden=hidden, layers=layers, dropout=dropout,
                           tie_weights=tie_weights, emb_size=emb_size, init_scale=init_scale)
        self.cell_clip = cell_clip  # recorded in arch() only when set, so manifests without it stay as they were
        self.encoder = nn.Embedding(vocab_size, emb_size)
        self.rnn = nn.Module()
        self.rnn.layers = nn.ModuleList(
            GateAwareLSTMLayer(emb_size if k == 0 else hidden, hidden) for k in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.reset_parameters(init_scale)

    def reset_parameters(self, init_scale: float) -> None:
        for p in self.parameters():  # Zaremba: every weight and bias uniform(-s, s)
            nn.init.uniform_(p, -init_scale, init_scale)

    def init_state(self, batch_size: int, device=None, dtype=torch.float32):
        H = self.config["hidden"]
        return [(torch.zeros(batch_size, H, device=device, dtype=dtype),
                 torch.zeros(batch_size, H, device=device, dtype=dtype)) for _ in self.rnn.layers]

    def forward(self, ids: torch.Tensor, state=None):
        # ids: (T, B) -> logits (T, B, V)
        if state is None:
            state = self.init_state(ids.size(1), ids.device)
        if self.cell_clip is not None:
            state = [(h, c.clamp(-self.cell_clip, self.cell_clip)) for h, c in state]
        x = self.drop(self.encoder(ids))  # (T, B, E)
        new_state = []
        for layer, s in zip(self.rnn.layers, state):
            x, s = layer(x, s)
            x = self.drop(x)
            new_state.append(s)
        return self.decoder(x), new_state  # (T, B, V)

    def arch(self) -> dict:
        extra = {} if self.cell_clip is None else {"cell_clip": self.cell_clip}
        return {"kind": self.kind, **self.config, **extra}


def build_from_preset(preset: str, vocab_size: int, tie_weights: bool | None = None) -> LSTMLanguageModel:
    check(preset in PRESETS, f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    return LSTMLanguageModel(vocab_size, p.hidden, p.layers, p.dropout,
                             p.tie_weights if tie_weights is None else tie_weights, init_scale=p.init_scale)


def preset_dict(preset: str) -> dict:
    return asdict(PRESETS[preset])


def detach_state(state):
    return [(h.detach(), c.detach()) for h, c in state]


@torch.no_grad()
def copy_state_(dst, src) -> None:
    """Copy hidden state ``src`` into the tensors of ``dst`` in place ([(h, c)] per layer, same shapes). In place
    because a captured CUDA graph keeps reading and writing the same tensors."""
    for (h, c), (h2, c2) in zip(dst, src):
        h.copy_(h2)
        c.copy_(c2)


@torch.no_grad()
def zero_state_(state) -> None:
    """Zero hidden state [(h, c)] per layer in place (a new epoch, without new tensors: see :func:`copy_state_`)."""
    for h, c in state:
        h.zero_()
        c.zero_()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per token; (T, B, V), (T, B) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
