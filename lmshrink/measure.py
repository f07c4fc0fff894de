"""Honest accounting: the one place sizes and speeds are counted.

Three sizes are kept apart: *parameters* (stored numbers), *theoretical bits* (what the format needs:
dtype width for dense tensors, packed widths and index bits for compressed layers, as each layer
reports) and *bytes on disk* (``stat`` of the files written). Latency is measured, never inferred:
tokens per second of a forward pass, after warm-up, the median of repeats -- either eagerly (one kernel
launch per op from Python) or, on CUDA, as replays of one captured CUDA graph of the whole forward
(:class:`GraphedLMForward`), which removes the launch overhead the way a fixed-shape serving stack would.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn as nn

from .errors import check
from .layers import CompressedLayer, TiedProjection, tensor_bits


def layer_rows(model: nn.Module) -> list[dict]:
    """One row per leaf layer that stores tensors: name, kind, params, bits, bytes (= bits / 8).

    A tensor shared by two modules (a tied weight) is counted at its first owner only.
    """
    rows, seen = [], set()
    skip_prefixes: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(m, CompressedLayer):
            skip_prefixes.append(name + ".")
            for t in m.stored_tensors():
                seen.add(id(t))
            kind = m.layer_type + (f" -> {m.source_name}" if isinstance(m, TiedProjection) else "")
            rows.append({"name": name, "kind": kind, "params": m.num_params(), "bits": m.bits()})
            continue
        own = [t for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)) if id(t) not in seen]
        shared = [t for t in m.parameters(recurse=False) if id(t) in seen]
        if not own and not shared:
            continue
        for t in own:
            seen.add(id(t))
        kind = type(m).__name__ + (" (tied)" if shared else "")
        rows.append({"name": name or "(root)", "kind": kind, "params": sum(t.numel() for t in own),
                     "bits": sum(tensor_bits(t) for t in own)})
    for r in rows:
        r["bytes"] = r["bits"] / 8
    return rows


def totals(model: nn.Module) -> dict:
    rows = layer_rows(model)
    return {"params": sum(r["params"] for r in rows), "bits": sum(r["bits"] for r in rows)}


def _tensors_in(obj, depth: int = 0):
    """Tensors held by an attribute: directly, or inside dicts / lists / tuples (a few levels deep)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 4 and isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, depth + 1)
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, depth + 1)


def _storages(t: torch.Tensor) -> list[tuple[tuple, int]]:
    """((device, data pointer), bytes) of each storage behind ``t``; sparse tensors through their components."""
    if t.layout == torch.sparse_coo:
        return [x for c in (t._indices(), t._values()) for x in _storages(c)]
    if t.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        parts = ((t.crow_indices(), t.col_indices()) if t.layout in (torch.sparse_csr, torch.sparse_bsr)
                 else (t.ccol_indices(), t.row_indices()))
        return [x for c in (*parts, t.values()) for x in _storages(c)]
    st = t.untyped_storage()
    return [((str(t.device), st.data_ptr()), st.nbytes())]


def resident_bytes(model: nn.Module) -> dict:
    """Bytes of tensor memory ``model`` holds right now, each storage counted once (tied or viewed tensors share one).

    ``state``: parameters and buffers (what ``state_dict`` saves, in memory: a packed layer's codes stay packed).
    ``caches``: every other tensor a module keeps -- the inference operands layers derive from their state and
    hold between calls (GroupReduce's block-diagonal or grouped operands and index maps, the int4 CPU kernel's
    packed copy), found in module attributes, dicts and lists. Measured from the tensors themselves, so a cache
    shows up whatever layer built it; what a forward allocates and frees again is not here (peak memory is a
    device-allocator question). ``total`` = both.
    """
    seen: set[tuple] = set()
    out = {"state": 0, "caches": 0}

    def add(t: torch.Tensor, kind: str) -> None:
        for key, nbytes in _storages(t):
            if key not in seen:
                seen.add(key)
                out[kind] += nbytes

    modules = list(model.modules())
    for m in modules:  # state first, so a cache that aliases a parameter is not counted as a cache
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                add(t, "state")
    skip = {"_parameters", "_buffers", "_modules"}
    for m in modules:
        for name, value in vars(m).items():
            if name not in skip:
                for t in _tensors_in(value):
                    add(t, "caches")
    return {**out, "total": out["state"] + out["caches"]}


def bytes_on_disk(model_dir: str | Path) -> dict:
    """Real file sizes of a model directory: weights, manifest, vocabulary file, and every file's sum."""
    from .io import MANIFEST, VOCAB, WEIGHTS

    files = {p.name: p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file()}
    return {"weights": files.get(WEIGHTS, 0), "manifest": files.get(MANIFEST, 0), "vocab": files.get(VOCAB, 0),
            "total": sum(files.values())}


def other_gpu_processes(own: set[int]) -> int | None:
    """How many GPU compute processes outside ``own`` (process ids) nvidia-smi lists now; None where it cannot
    tell (no nvidia-smi, or a container whose process ids it does not show: then none of ``own`` is listed).
    Why: a timing or a training wall time taken while another script shares the GPU is not a figure alone."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True, check=False,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    pids = {int(x) for x in out.stdout.split() if x.strip().isdigit()} if out.returncode == 0 else set()
    return len(pids - own) if pids & own else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lm_tokens_per_second(model: nn.Module, vocab_size: int, device: str | torch.device = "cpu",
                         batch_size: int = 1, seq_len: int = 35, warmup: int = 3, repeats: int = 10,
                         autocast_dtype: torch.dtype | None = None, seed: int = 0, fused: bool | None = None,
                         cuda_graph: bool = False) -> dict:
    """Forward-pass throughput of a language model on random ids: median tokens/s over ``repeats``.

    The default (batch 1 on CPU) is the latency a single user sees; batch 64 on GPU is serving
    throughput. Hidden state carries over between windows as in evaluation. ``fused`` picks how compressed
    LSTM layers are served: None (default) as a user's model runs, the layers' "auto" choice
    (``models.lstm_lm.rebuild_at_inference``: on CUDA from 4 steps per window, dense weights rebuilt; else the
    compact maps); True rebuilds the dense LSTM weights from the compact maps each window and runs the fused
    kernel (``models.lstm_lm.fused_lstm``; the dense weight lives only during the call); False steps through
    the compact maps whatever the device and length.

    ``cuda_graph`` (CUDA only) times replays of one captured CUDA graph of the whole forward instead of eager
    calls (:class:`GraphedLMForward`): ``warmup`` eager forwards on a side stream, one capture, ``warmup``
    untimed replays, then ``repeats`` timed replays, each synchronized before and after as the eager passes
    are. The next window is copied into the graph's static input ids outside the timed region, and the
    hidden state carries over between replays inside the graph. The result has the same keys plus
    ``"cuda_graph": True``. Works with ``fused`` too (the rebuild of the dense LSTM weights is captured).
    """
    from .models.lstm_lm import fused_lstm

    device = torch.device(device)
    if cuda_graph:
        check(device.type == "cuda", f"cuda_graph=True times CUDA graph replays and needs a CUDA device, got {device}")
    # moved before inference mode: a module moved inside it gets inference-tensor parameters and buffers,
    # which the caller can then neither train nor version-check (a GPU-only crash, 2026-11-23)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    windows = [torch.randint(0, vocab_size, (seq_len, batch_size), generator=g).to(device) for _ in range(4)]
    if cuda_graph:
        graphed = GraphedLMForward(model, windows[0], warmup=warmup, fused=fused, autocast_dtype=autocast_dtype)
        times = []
        for i in range(warmup + repeats):
            graphed.ids.copy_(windows[i % len(windows)])  # untimed, as the eager path's windows are ready-made
            _sync(device)
            t0 = time.perf_counter()
            graphed.replay()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        del graphed  # frees the graph's private memory pool
        med = statistics.median(times)
        return {"tokens_per_s": batch_size * seq_len / med, "ms_per_token": 1000 * med / (batch_size * seq_len),
                "batch_size": batch_size, "seq_len": seq_len, "device": str(device), "repeats": repeats,
                "threads": torch.get_num_threads(), "fused": fused, "cuda_graph": True}
    state = model.init_state(batch_size, device)
    times = []
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), ctx, fused_lstm(model, fused):
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            _, state = model(windows[i % len(windows)], state)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"tokens_per_s": batch_size * seq_len / med, "ms_per_token": 1000 * med / (batch_size * seq_len),
            "batch_size": batch_size, "seq_len": seq_len, "device": str(device), "repeats": repeats,
            "threads": torch.get_num_threads(), "fused": fused}


class GraphedLMForward:
    """One inference forward ``logits, state = model(ids, state)`` of an LSTM LM on static buffers, captured
    once as a CUDA graph and replayed ("whole-network capture" of PyTorch's CUDA-graphs notes).

    ``ids`` (T, B) is copied into the static input :attr:`ids` (``ids.device`` must be CUDA; ``model`` already
    there and in eval mode). :attr:`state` starts as ``model.init_state(B)``; the captured graph copies the new
    hidden state back into it, so it carries over between replays as in evaluation. :attr:`logits` (T, B, V) is
    the static output, overwritten by each :meth:`replay`.

    Before capture, ``max(warmup, 1)`` eager forwards run on a side stream: compressed layers build and cache
    derived index tensors on their first call (``layers.block_low_rank._BlockLowRank._index``), which needs
    host-to-device copies a capture cannot hold, and cuDNN / the allocator settle there. ``fused`` captures the
    forward under ``models.lstm_lm.fused_lstm(model, fused)`` (True: the per-window rebuild of dense LSTM weights
    is recorded too; False: the compact maps step by step; None: the layers' "auto" choice).
    ``autocast_dtype`` runs it under autocast without its weight cache (which a graph cannot keep).
    A failing capture raises ``RuntimeError`` naming the model's class and its compressed layer types.
    """

    def __init__(self, model: nn.Module, ids: torch.Tensor, warmup: int = 3, fused: bool | None = None,
                 autocast_dtype: torch.dtype | None = None):
        from .models.lstm_lm import copy_state_, fused_lstm

        device = ids.device
        check(device.type == "cuda", f"a CUDA graph needs a CUDA device, got {device}")
        self.model = model
        self.ids = ids.clone()  # (T, B) static input ids
        self.state = model.init_state(ids.size(1), device)  # [(h, c)] per layer, each (B, H), static

        def amp():
            if autocast_dtype is None:
                return torch.autocast("cuda", enabled=False)
            return torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False)

        with torch.cuda.device(device), torch.no_grad(), fused_lstm(model, fused):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), amp():
                for _ in range(max(warmup, 1)):
                    model(self.ids, self.state)  # state not carried: warm-up only
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph), amp():  # records; nothing runs until replay
                    logits, new_state = model(self.ids, self.state)
                    copy_state_(self.state, new_state)
            except Exception as e:
                kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, CompressedLayer)})
                raise RuntimeError(
                    f"CUDA graph capture of {type(model).__name__}"
                    + (f" (compressed layers: {', '.join(kinds)})" if kinds else " (dense)")
                    + f"{f' with fused={fused}' if fused is not None else ''} failed: {type(e).__name__}: {e}") from e
        self.logits = logits  # (T, B, V) static output

    def replay(self) -> torch.Tensor:
        """Run the captured forward on :attr:`ids` and :attr:`state` (asynchronously); returns :attr:`logits`."""
        self.graph.replay()
        return self.logits


def lm_forward_breakdown(model: nn.Module, vocab_size: int, device: str | torch.device = "cpu", batch_size: int = 1,
                         seq_len: int = 35, warmup: int = 3, repeats: int = 10, seed: int = 0,
                         fused: bool | None = None) -> dict:
    """Median milliseconds per window of each part of an LSTM LM's forward: ``encoder``, ``rnn``, ``decoder``.

    Each part is timed on its own (synchronized before and after), on the inputs the previous part
    produced, so the three add up to about a whole forward pass and show where a compressed layer's time
    goes -- the whole-model ratio of :func:`lm_tokens_per_second` alone cannot say which layer is slow.
    ``fused`` picks the compressed LSTM layers' path as in :func:`lm_tokens_per_second` (None: their own choice).
    """
    from .models.lstm_lm import fused_lstm

    device = torch.device(device)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (seq_len, batch_size), generator=g).to(device)  # (T, B)
    times: dict[str, list[float]] = {"encoder": [], "rnn": [], "decoder": []}

    def timed(part: str, fn, keep: bool):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        if keep:
            times[part].append(1000 * (time.perf_counter() - t0))
        return out

    with torch.inference_mode(), torch.autocast(device.type, enabled=False), fused_lstm(model, fused):
        state = model.init_state(batch_size, device)
        for i in range(warmup + repeats):
            keep = i >= warmup
            x = timed("encoder", lambda: model.encoder(ids), keep)  # (T, B, E)

            def rnn(x=x):
                for layer, s in zip(model.rnn.layers, state):
                    x, _ = layer(x, s)
                return x  # (T, B, H)

            x = timed("rnn", rnn, keep)
            timed("decoder", lambda x=x: model.decoder(x), keep)  # (T, B, V)
    return {part: statistics.median(v) for part, v in times.items()}
