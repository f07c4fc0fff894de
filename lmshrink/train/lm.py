"""Training and evaluation of language models: the SGD recipe of Zaremba et al. (2014).

Zaremba et al. / the TensorFlow PTB tutorial sum the cross-entropy over the BPTT window and average
it over the batch, clip the global gradient norm, and keep SGD's learning rate for ``decay_after``
epochs before multiplying it by ``lr_decay`` every epoch. We reproduce that exactly (the loss is the
per-token mean times the window length), because the clipping threshold and learning rate only
mean what the paper means on that scale.

Runs checkpoint to ``OUT.checkpoint/`` every few minutes, at each epoch end and on Ctrl-C; a new run
with the same ``OUT`` resumes from there (model, step, hidden state, RNG state, history).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..compress import training_forms
from ..data import Corpus, batchify, bptt_windows
from ..errors import DivergedError, LmshrinkError, check
from ..models.lstm_lm import Preset, copy_state_, detach_state, lm_loss
from . import hooks
from .distill import Teacher, check_teacher


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    check(device.type != "cuda" or torch.cuda.is_available(), "--device cuda asked for, but CUDA is not available")
    return device


def autocast_for(device: torch.device, precision: str):
    """``auto``: bf16 autocast on GPU (fp32 master weights), fp32 on CPU. ``fp32``: no autocast.

    On a GPU this also turns TF32 matmuls on, for the whole process (PyTorch's flags are global): "fp32" training
    there multiplies in TF32, and whatever runs afterwards in the same process does too -- ``benchmarks/vocab.py``
    timed its models after retraining, so its GPU speeds are TF32 speeds (it records ``matmul_tf32``).
    """
    check(precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {precision!r}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_ppl(model: nn.Module, ids: torch.Tensor, batch_size: int = 10, bptt: int = 35,
                 device: str | torch.device = "cpu", precision: str = "fp32", fused: bool = True,
                 cell_max: list | None = None) -> float:
    """Perplexity of ``model`` on a 1-D id stream, hidden state carried across windows.

    Zaremba et al. report test perplexity at batch 1 (``eval_config``); batch 1 with carried state
    equals their one-step evaluation up to rounding. ``fused`` runs compressed LSTM layers through the
    fused kernel on their rebuilt dense weights (``models.lstm_lm.fused_lstm``): the same function, faster.
    ``cell_max``, a list, receives the largest |c| each LSTM layer carried out of a window: a runaway
    cell (``LSTMLanguageModel.cell_clip``) shows there long before it shows in an average.
    """
    from ..models.lstm_lm import fused_lstm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    data = batchify(ids.to(device), batch_size)  # (N, B)
    state = model.init_state(batch_size, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    peak = None  # (L,) on the device: no sync per window
    with autocast_for(device, precision), fused_lstm(model, fused):
        for inputs, targets in bptt_windows(data, bptt):
            logits, state = model(inputs, state)
            total += lm_loss(logits, targets).double() * targets.numel()
            count += targets.numel()
            if cell_max is not None:
                now = torch.stack([c.detach().abs().max().float() for _, c in state])
                peak = now if peak is None else torch.maximum(peak, now)
    model.train(was_training)
    if cell_max is not None and peak is not None:
        cell_max[:] = [float(v) for v in peak]
    mean = float(total) / count
    if not math.isfinite(mean):
        raise LmshrinkError("evaluation loss is NaN or inf: the model's weights are broken")
    return _ppl(mean)


def _ppl(mean_nats: float) -> float:
    """exp of a mean cross-entropy; a finite loss past float range is an infinite perplexity, not a crash."""
    return math.exp(mean_nats) if mean_nats < 709.0 else math.inf


# A mean cross-entropy this high (perplexity e^100) is no language model: the run has diverged.
DIVERGED_NATS = 100.0


def zaremba_lr(recipe: Preset, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr * lr_decay ** max(epoch + 1 - decay_after, 0)``."""
    return recipe.lr * recipe.lr_decay ** max(epoch + 1 - recipe.decay_after, 0)


def _save_tensors_atomic(tensors: dict, path: Path) -> None:
    """safetensors written to a temporary name, then renamed: a cut never leaves half a file."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


class _Checkpoint:
    """Model + trainer state in ``OUT.checkpoint/``, each file written atomically."""

    def __init__(self, out_dir: Path | None):
        self.dir = Path(str(out_dir) + ".checkpoint") if out_dir is not None else None

    def exists(self) -> bool:
        return self.dir is not None and (self.dir / "trainer.json").is_file()

    def save(self, model, trainer: dict, state, teacher_state=None) -> None:
        if self.dir is None:
            return
        from ..io import save_model_dir, write_json_atomic

        save_model_dir(model, self.dir / "model")
        tensors = {}
        # the distillation teacher's hidden state too: a run resumed mid-epoch goes on with the same soft targets
        for prefix, st in (("", state), ("teacher_", teacher_state or [])):
            for i, (h, c) in enumerate(st):
                tensors[f"{prefix}h{i}"] = h.detach().float().cpu().contiguous()
                tensors[f"{prefix}c{i}"] = c.detach().float().cpu().contiguous()
        tensors["rng_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng_cuda"] = torch.cuda.get_rng_state()
        _save_tensors_atomic(tensors, self.dir / "state.safetensors")
        write_json_atomic(self.dir / "trainer.json", trainer)

    def load(self, device):
        from safetensors.torch import load_file

        from ..io import load_model_dir

        model, _ = load_model_dir(self.dir / "model", device=device)
        trainer = json.loads((self.dir / "trainer.json").read_text())
        t = load_file(str(self.dir / "state.safetensors"))
        n = sum(1 for k in t if k.startswith("h"))
        state = [(t[f"h{i}"].to(device), t[f"c{i}"].to(device)) for i in range(n)]
        n_t = sum(1 for k in t if k.startswith("teacher_h"))  # 0 unless the run distilled from a teacher
        teacher_state = [(t[f"teacher_h{i}"].to(device), t[f"teacher_c{i}"].to(device)) for i in range(n_t)]
        torch.set_rng_state(t["rng_cpu"])
        if "rng_cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng_cuda"])
        return model, trainer, state, teacher_state

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def train_lm(model: nn.Module, corpus: Corpus, recipe: Preset, out_dir: str | Path | None = None,
             device: str | torch.device = "cpu", epochs: int | None = None, max_steps: int | None = None,
             seed: int = 0, precision: str = "auto", progress: bool = True, resume: bool = True,
             checkpoint_every_s: float = 300.0, lr_fn=None, log=print, cuda_graph: bool = False,
             teacher=None) -> dict:
    """Train ``model`` with Zaremba's recipe; returns metrics and the (possibly resumed) model.

    ``epochs`` / ``max_steps`` cut a run short. ``lr_fn(epoch) -> lr`` overrides the schedule.
    ``cuda_graph`` captures the training step once as a CUDA graph and replays it (``train.graphed``):
    CUDA, fp32 and models without per-step training hooks only.
    ``teacher`` (a :class:`lmshrink.train.distill.Teacher`) trains on its soft targets as well as the data
    (Hinton et al. 2015); the reported train perplexity stays the data's.
    Returns a dict with ``model``, ``valid_ppl``, ``history``, ``wall_s``, ``train_tokens_per_s``.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    epochs = recipe.epochs if epochs is None else epochs
    check(epochs >= 1, "epochs must be at least 1")
    check(max_steps is None or max_steps >= 1, "max-steps must be at least 1")
    lr_fn = lr_fn or (lambda e: zaremba_lr(recipe, e))
    ckpt = _Checkpoint(Path(out_dir) if out_dir is not None else None)
    seed_everything(seed)

    train_data = batchify(corpus.train.to(device), recipe.batch_size)  # (N, B)
    windows_per_epoch = math.ceil((train_data.size(0) - 1) / recipe.bptt)
    total_steps = epochs * windows_per_epoch if max_steps is None else min(max_steps, epochs * windows_per_epoch)
    trainer = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [], "wall_s": 0.0,
               "train_tokens": 0, "seed": seed}
    state = None
    loss_sum, tok_sum, t_epoch = None, 0, time.monotonic()

    def save_checkpoint() -> None:
        # the epoch's running loss goes with the checkpoint, so a resumed epoch reports the whole epoch
        trainer.update(wall_s=time.monotonic() - t_start, epoch_loss_sum=float(loss_sum) if loss_sum is not None else 0.0,
                       epoch_tokens=tok_sum, epoch_seconds=time.monotonic() - t_epoch)
        ckpt.save(model, trainer, state, teacher.state if teacher is not None else None)

    teacher_state = []  # the teacher's hidden state in a checkpoint resumed mid-epoch
    if resume and ckpt.exists():
        model, trainer, state, teacher_state = ckpt.load(device)
        log(f"resuming from {ckpt.dir} at epoch {trainer['epoch'] + 1}, step {trainer['step_in_epoch']}")
    model = model.to(device).train()
    if teacher is not None:
        teacher.to(device).reset_state(recipe.batch_size, device)
        if state is not None and trainer["step_in_epoch"] > 0 and teacher_state:
            copy_state_(teacher.state, teacher_state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr_fn(trainer["epoch"]))
    amp = autocast_for(device, precision)
    static = None  # the captured step, when cuda_graph
    if cuda_graph:
        from .graphed import StaticLMStep, check_graphable, graph_ready

        check_graphable(device, precision)
        why = graph_ready(model)
        check(why is None, f"--cuda-graph cannot capture this model: {why}")
        static = StaticLMStep(model, params, recipe.bptt, recipe.batch_size, recipe.max_grad_norm, device, capture=True,
                              teacher=teacher)
        if state is not None:
            static.load_state(state)
    last_ckpt = time.monotonic()
    t_start = time.monotonic() - trainer["wall_s"]
    done = trainer["global_step"] >= total_steps

    try:
        while trainer["epoch"] < epochs and not done:
            epoch = trainer["epoch"]
            for g in opt.param_groups:
                g["lr"] = lr_fn(epoch)
            if state is None or trainer["step_in_epoch"] == 0:
                state = model.init_state(recipe.batch_size, device)
                if static is not None:
                    static.reset_state()
                if teacher is not None:
                    teacher.reset_state(recipe.batch_size, device)
            if static is not None:
                static.set_lr(lr_fn(epoch))
                state = static.state
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            tok_sum, t_epoch = 0, time.monotonic()
            if trainer["step_in_epoch"] > 0:  # resumed inside this epoch
                loss_sum += trainer.get("epoch_loss_sum", 0.0)
                tok_sum = trainer.get("epoch_tokens", 0)
                t_epoch -= trainer.get("epoch_seconds", 0.0)
            bar = tqdm(total=windows_per_epoch, initial=trainer["step_in_epoch"], disable=not progress,
                       desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            for k, (inputs, targets) in enumerate(bptt_windows(train_data, recipe.bptt)):
                if k < trainer["step_in_epoch"]:
                    continue
                if static is not None:  # the same step, replayed from a CUDA graph (last, shorter window eagerly)
                    loss = static(inputs, targets) if inputs.size(0) == recipe.bptt else static.eager(inputs, targets)
                    state = static.state
                else:
                    state = detach_state(state)
                    with amp:
                        logits, state = model(inputs, state)
                        loss = lm_loss(logits, targets)
                        fit = teacher.loss(logits, inputs, loss) if teacher is not None else loss
                    # TF tutorial scale: summed over the window, averaged over the batch.
                    objective = fit * inputs.size(0) + hooks.extra_loss(model)
                    opt.zero_grad(set_to_none=True)
                    objective.backward()
                    if recipe.max_grad_norm:
                        nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                    opt.step()
                trainer["global_step"] += 1
                trainer["step_in_epoch"] = k + 1
                hooks.after_step(model, trainer["global_step"], total_steps)
                loss_sum += loss.detach().double() * targets.numel()
                tok_sum += targets.numel()
                trainer["train_tokens"] += targets.numel()
                if k % 50 == 0 or k + 1 == windows_per_epoch:
                    mean = float(loss_sum) / max(tok_sum, 1)
                    _check_loss(mean, epoch, k)
                    bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.1f}",
                                    tok_s=f"{tok_sum / max(time.monotonic() - t_epoch, 1e-9):.0f}", lr=f"{opt.param_groups[0]['lr']:.3g}")
                bar.update(1)
                if trainer["global_step"] >= total_steps:
                    done = True
                    break
                if time.monotonic() - last_ckpt > checkpoint_every_s:
                    save_checkpoint()
                    last_ckpt = time.monotonic()
            bar.close()
            mean = float(loss_sum) / max(tok_sum, 1)
            _check_loss(mean, epoch, trainer["step_in_epoch"] - 1)
            train_ppl = _ppl(mean)
            valid_ppl = evaluate_ppl(model, corpus.splits["valid"], recipe.batch_size, recipe.bptt, device)
            model.train()
            epoch_s = time.monotonic() - t_epoch
            trainer["history"].append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_ppl": train_ppl,
                                       "valid_ppl": valid_ppl, "seconds": epoch_s, "tokens_per_s": tok_sum / epoch_s})
            log(f"epoch {epoch + 1:3d}  lr {opt.param_groups[0]['lr']:.4g}  train ppl {train_ppl:8.2f}  "
                f"valid ppl {valid_ppl:8.2f}  {tok_sum / epoch_s:,.0f} tok/s")
            trainer["epoch"] += 1
            trainer["step_in_epoch"] = 0
            loss_sum, tok_sum = None, 0
            trainer["wall_s"] = time.monotonic() - t_start
            if not done and trainer["epoch"] < epochs:
                save_checkpoint()
                last_ckpt = time.monotonic()
    except KeyboardInterrupt:
        if state is not None:
            save_checkpoint()
            log(f"interrupted: checkpoint saved to {ckpt.dir}; run the same command again to resume")
        raise
    wall = time.monotonic() - t_start
    hist = trainer["history"]
    return {"model": model, "history": hist, "epochs": len(hist), "steps": trainer["global_step"],
            "valid_ppl": hist[-1]["valid_ppl"] if hist else None, "wall_s": wall,
            "train_tokens_per_s": trainer["train_tokens"] / max(wall, 1e-9), "checkpoint": ckpt,
            "cuda_graph": None if static is None else {"captured": static.graph is not None,
                                                        "fallback": static.fallback_reason}}


def _check_loss(mean: float, epoch: int, step: int) -> None:
    if not math.isfinite(mean) or mean > DIVERGED_NATS:
        raise DivergedError(f"training loss became NaN/inf or diverged (mean cross-entropy {mean:.3g}) at epoch "
                            f"{epoch + 1}, step {step + 1}; lower the learning rate or gradient-norm limit")


def check_finetune_lr(lr: float | None) -> None:
    """Retraining's first rate: None (the recipe's lr / 10) or a positive, finite number."""
    check(lr is None or (math.isfinite(lr) and lr > 0), f"finetune learning rate: --finetune-lr must be a positive number, got {lr}")


def check_finetune_dropout(dropout: float | None) -> None:
    """Retraining's dropout rate: None (the model's own) or a number in [0, 1) (a bool is not)."""
    check(dropout is None or (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1),
          f"finetune dropout: --finetune-dropout must be in [0, 1), got {dropout!r}")


def check_patience(patience) -> None:
    """``patience`` is an integer >= 0 (a bool is not): epochs without improvement before the rate drops."""
    check(isinstance(patience, int) and not isinstance(patience, bool) and patience >= 0,
          f"finetune patience: --finetune-patience must be an integer >= 0, got {patience!r}")


class _FinetuneCheckpoint:
    """The state of ``finetune_lm`` after each finished epoch: the weights (safetensors: no pickle) and the
    schedule (JSON), each written atomically, so a retraining cut by a time limit resumes there. After an epoch
    the model holds the best weights seen (a worse epoch is undone), so one set of weights is enough -- except
    with ``patience``, where training goes on from worse epochs' weights: those are kept beside the best
    (``current.safetensors``) until an epoch improves again.

    The weights are loaded into the caller's model, which must have been compressed the same way (the same
    method, settings and seed give the same structure); a mismatch is an error, not a silent restart."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)

    def save(self, best_state: dict, status: dict, current_state: dict | None = None) -> None:
        from ..io import write_json_atomic

        self.dir.mkdir(parents=True, exist_ok=True)

        def cpu_copies(state: dict) -> dict:  # clones: tied weights share storage, which safetensors refuses
            return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

        _save_tensors_atomic(cpu_copies(best_state), self.dir / "weights.safetensors")
        current = self.dir / "current.safetensors"
        if current_state is not None:
            _save_tensors_atomic(cpu_copies(current_state), current)
        # the status names which weights the model holds, so a stale current file is never resumed from
        write_json_atomic(self.dir / "finetune.json", {**status, "current": current_state is not None})
        if current_state is None:
            current.unlink(missing_ok=True)

    def load(self, model: nn.Module, device, settings: dict) -> tuple[dict, dict] | None:
        """(best weights, now also in ``model``; schedule), or None when there is nothing to resume."""
        if not (self.dir / "finetune.json").is_file():
            return None
        from safetensors.torch import load_file

        status = json.loads((self.dir / "finetune.json").read_text())
        theirs = status.get("settings")
        check(theirs == settings, f"retraining checkpoint {self.dir} was made with other settings ({theirs}, now "
                                  f"{settings}); delete it to start over")
        try:
            best_state = load_file(str(self.dir / "weights.safetensors"), device=str(device))
            model.load_state_dict(best_state)
            if status.get("current"):  # within patience: training goes on from the last epoch's weights
                model.load_state_dict(load_file(str(self.dir / "current.safetensors"), device=str(device)))
        except (RuntimeError, OSError, ValueError) as e:
            raise LmshrinkError(f"retraining checkpoint {self.dir} does not fit this model or is damaged "
                                f"({str(e).splitlines()[0]}); delete it to start over") from None
        return best_state, status

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def finetune_lm(model: nn.Module, corpus: Corpus, recipe: Preset, epochs: int, lr: float | None = None,
                device: str | torch.device = "cpu", progress: bool = True, precision: str = "auto",
                seed: int = 0, log=print, checkpoint_dir: str | Path | None = None, cuda_graph: bool = False,
                dropout: float | None = None, teacher: nn.Module | None = None, distill: float | None = None,
                distill_temperature: float = 1.0, patience: int = 0) -> dict:
    """Retrain a (compressed) model: SGD from ``lr`` (default ``recipe.lr / 10``), divided by 10 whenever
    validation perplexity stops improving, as GroupReduce's retraining does (Chen et al. 2018, Sec. 3.4).
    The best weights seen on validation are kept.

    ``patience`` (default 0, the paper's rule) lets that many epochs in a row fail to improve before the rate
    drops, and training then goes on from the latest weights at the lower rate (as torch's ReduceLROnPlateau
    does, its count starting again at each rate) instead of undoing the epochs; a diverged epoch drops the rate
    and returns to the best weights at once. The best weights seen on validation are
    what retraining returns either way. Why: a large first rate first makes a good starting point worse -- on
    PTB small, GroupReduce's first epoch at rate 1 went from valid 131 to 145 -- and the paper's rule then
    undoes that epoch and leaves the rate, while SVD, starting far worse, improved at rate 1 for four epochs and
    ended ahead (valid 117.8 against 120.3); undoing the high rate's epochs when it finally drops would throw
    away what it found. Measured once, on the CPU-trained PTB small (``results/vocab_ptb_small_cpu13_lr1_patience*``,
    GroupReduce 6.6x, rank ~ log(frequency), 6 epochs from rate 1): patience 2 ended at test 130.23 against 117.57
    with 0 -- rate 1 wrecks GroupReduce's start (valid 147 to 206, then 196 and 191) rather than exploring, and
    three epochs at 0.1 did not win it back. So the default stays 0.

    ``cuda_graph`` replays each epoch's training step from a CUDA graph (see :func:`train_lm`) where the model
    allows it: why the graph was not used (a model with per-step training hooks, such as AGP pruning, trains
    eagerly) or whether capture fell back is returned under ``"cuda_graph"``. Why: the per-block GEMMs of a
    GroupReduce layer make a small model's step launch-bound (PTB small: GroupReduce retraining took ~8x as
    long per epoch as SVD's on an H100).

    ``dropout`` sets every ``nn.Dropout``'s rate for the retraining epochs only (restored afterwards; evaluation
    never drops). Why: a model trained without dropout (PTB ``small``) overfits within a retraining epoch at
    rate 0.1, and a regularized retraining may serve every method better.

    ``teacher`` (the dense model the compressed one came from) and ``distill``, a weight in [0, 1], retrain on
    ``(1 - distill) * CE(data) + distill * T^2 * KL(teacher || model)`` at temperature ``distill_temperature``
    (Hinton et al. 2015; ``lmshrink.train.distill``). Validation, the rate schedule and the kept best state
    still go by the data's perplexity.

    With ``checkpoint_dir`` the state after every epoch is kept there and a later call with the same
    model resumes after the last finished epoch (the same result as one uninterrupted call, since each
    epoch's seed is ``seed + epoch + 1``); the folder is removed when retraining ends.
    """
    check(epochs >= 0, "finetune epochs must be >= 0")
    check_finetune_lr(lr)
    check_finetune_dropout(dropout)
    check_teacher(teacher, distill, distill_temperature)
    check_patience(patience)
    tutor = Teacher(teacher, distill, distill_temperature) if teacher is not None else None
    with training_forms(model):  # CSR-pruned layers retrain as dense x fixed pattern, CSR again afterwards
        return _finetune(model, corpus, recipe, epochs, lr=lr, device=device, progress=progress, precision=precision,
                         seed=seed, log=log, checkpoint_dir=checkpoint_dir, cuda_graph=cuda_graph, dropout=dropout,
                         teacher=tutor, patience=patience)


def _finetune(model: nn.Module, corpus: Corpus, recipe: Preset, epochs: int, *, lr, device, progress, precision, seed,
              log, checkpoint_dir, cuda_graph, dropout, teacher, patience) -> dict:
    """:func:`finetune_lm`'s loop, on the model in its training form."""
    device = resolve_device(device)
    model = model.to(device)
    ckpt = _FinetuneCheckpoint(checkpoint_dir) if checkpoint_dir is not None and epochs > 0 else None
    settings = {"lr": recipe.lr / 10 if lr is None else lr, "epochs": epochs, "seed": seed}
    if dropout is not None:
        settings["dropout"] = float(dropout)  # a checkpoint made with another rate is not resumed
    if teacher is not None:
        settings["distill"] = [teacher.weight, teacher.temperature]  # nor one made with another teacher weighting
    if patience:
        settings["patience"] = patience  # nor one made with another patience
    graph_info = None
    if cuda_graph:
        from .graphed import check_graphable, graph_ready

        check_graphable(device, precision)
        why = graph_ready(model)
        graph_info = {"used": why is None, "why_not": why}
        cuda_graph = why is None
    resumed = ckpt.load(model, device, settings) if ckpt is not None else None
    if resumed is not None:
        best_state, status = resumed
        best, history, current, start = status["best"], status["history"], [status["lr"]], status["epochs_done"]
        bad, at_best = status.get("bad_epochs", 0), not status.get("current")
        log(f"finetune: resuming after epoch {start}/{epochs} (lr {current[0]:.3g}, best valid ppl {best:.2f})")
    else:
        best = evaluate_ppl(model, corpus.splits["valid"], recipe.batch_size, recipe.bptt, device)
        history = [{"epoch": 0, "valid_ppl": best}]
        if epochs == 0:
            return {"model": model, "valid_ppl": best, "history": history, "cuda_graph": graph_info}
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        current, start, bad, at_best = [settings["lr"]], 0, 0, True

    drops = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)} if dropout is not None else {}
    for m in drops:
        m.p = float(dropout)
    try:
        for epoch in range(start, epochs):
            try:
                out = train_lm(model, corpus, recipe, out_dir=None, device=device, epochs=1, seed=seed + epoch + 1,
                               precision=precision, progress=progress, lr_fn=lambda e: current[0], log=lambda *_: None,
                               cuda_graph=cuda_graph, teacher=teacher)
                v = out["valid_ppl"]
                if out.get("cuda_graph") and graph_info is not None:  # the last epoch's capture says how it went
                    graph_info.update(out["cuda_graph"])
            except DivergedError:  # the rate was too high: an epoch that did not improve (undone below)
                v = math.inf
            # a diverged epoch is recorded as such: JSON has no infinity
            history.append({"epoch": epoch + 1, "lr": current[0], "valid_ppl": v} if math.isfinite(v) else
                           {"epoch": epoch + 1, "lr": current[0], "valid_ppl": None, "diverged": True})
            log(f"finetune epoch {epoch + 1}/{epochs}  lr {current[0]:.3g}  valid ppl {v:.2f}")
            if v < best:
                best, bad, at_best = v, 0, True
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            elif math.isfinite(v) and bad < patience:
                bad, at_best = bad + 1, False  # go on from these weights at this rate
            else:
                current[0] /= 10
                bad = 0
                if patience and math.isfinite(v):
                    at_best = False  # the trajectory goes on at the lower rate (see docstring)
                else:
                    model.load_state_dict(best_state)  # the paper's rule: the epoch is undone
                    at_best = True
            if ckpt is not None:
                ckpt.save(best_state, {"settings": settings, "epochs_done": epoch + 1, "lr": current[0], "best": best,
                                       "history": history, "bad_epochs": bad},
                          current_state=None if at_best else model.state_dict())
    finally:
        for m, p in drops.items():
            m.p = p
    model.load_state_dict(best_state)
    if ckpt is not None:
        ckpt.remove()
    return {"model": model, "valid_ppl": best, "history": history, "cuda_graph": graph_info}


def remove_checkpoint(out_dir: str | Path) -> None:
    _Checkpoint(Path(out_dir)).remove()
