"""Training and evaluation of sentence classifiers (Acharya et al. 2019, Sec. 4: Adam with eps = 0.01,
batch 50, CALR), including the retraining of a compressed model ("online" low rank: the SVD factors of
the embedding keep training with the rest of the network, Sec. 3.1-3.2).

Model selection is on the dev split: the weights of the epoch with the best dev accuracy are kept
(ties: the later epoch), and test accuracy is reported for those weights. Batches are drawn by a seeded
shuffle each epoch and padded to their longest sentence.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.textcls import EncodedSplit, pad_batch
from ..errors import LmshrinkError, check
from . import hooks
from .calr import CALR
from .distill import blend, check_teacher

SCHEDULES = ("calr", "constant", "cosine", "onecycle")


def make_scheduler(name: str, opt: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, lr: float,
                   calr_options: dict | None = None):
    """``calr`` (:class:`~lmshrink.train.calr.CALR` with ``lr_high = lr``, the paper's defaults updated by
    ``calr_options``; ``step_size: "half_epoch"`` means half the epoch's steps), ``constant``, ``cosine``
    (from ``lr`` to 0 over the run) or ``onecycle`` (PyTorch's OneCycleLR with max ``lr``)."""
    check(name in SCHEDULES, f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if name == "calr":
        opts = dict(calr_options or {})
        if opts.get("step_size") == "half_epoch":
            opts["step_size"] = max(1, steps_per_epoch // 2)
        return CALR(opt, steps_per_epoch, lr_high=lr, **opts)
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(2, total_steps))


def batches(split: EncodedSplit, batch_size: int, generator: torch.Generator | None = None, max_len: int | None = None,
            pool: int = 20):
    """Yield ``(ids (B, T), labels (B,))``; shuffled when ``generator`` is given.

    Shuffling is bucketed: the shuffled examples are cut into pools of ``pool`` batches, each pool is sorted
    by length and cut into batches, and the batches are shuffled. Batches then pad little (about 2x less
    compute on SST/MR than padding random batches) while their composition stays random.
    """
    n = len(split)
    if generator is None:
        order = list(range(n))
        chunks = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    else:
        order = torch.randperm(n, generator=generator).tolist()
        chunks = []
        for p in range(0, n, batch_size * pool):
            part = sorted(order[p : p + batch_size * pool], key=lambda i: len(split.ids[i]))
            chunks += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    for idx in chunks:
        yield pad_batch([split.ids[i] for i in idx], max_len), split.labels[idx]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: EncodedSplit, device: str | torch.device = "cpu",
                      batch_size: int = 500) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on a split."""
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    # sort by length so each batch pads little; the result does not depend on the order
    order = sorted(range(len(split)), key=lambda i: len(split.ids[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x = pad_batch([split.ids[i] for i in idx]).to(device)
        y = split.labels[idx].to(device)
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(idx)
    model.train(was)
    check(n > 0, "evaluation split is empty")
    return {"accuracy": correct / n, "loss": loss / n, "examples": n}


def train_classifier(model: nn.Module, train: EncodedSplit, dev: EncodedSplit | None = None, epochs: int = 5,
                     batch_size: int = 50, lr: float = 1e-3, schedule: str = "calr", adam_eps: float = 0.01,
                     calr_options: dict | None = None, weight_decay: float = 0.0, max_grad_norm: float | None = 5.0,
                     seed: int = 0, device: str | torch.device = "cpu", select_on_dev: bool = True,
                     log=print, teacher: nn.Module | None = None, distill: float | None = None,
                     distill_temperature: float = 1.0) -> dict:
    """Train in place with Adam + ``schedule``; keep the best-dev-accuracy weights. Returns the history.

    ``teacher`` (a classifier over the same inputs, e.g. the dense model a compressed one came from) and ``distill``,
    a weight in [0, 1], train on ``(1 - distill) CE + distill T^2 KL(teacher || model)`` (Hinton et al. 2015,
    ``lmshrink.train.distill``); the teacher runs in eval mode without gradients, the reported loss stays the data's.

    Calls :func:`lmshrink.train.hooks.extra_loss` before every backward and
    :func:`lmshrink.train.hooks.after_step` after every optimizer step, as every lmshrink loop does.
    """
    check(epochs >= 1, f"epochs must be >= 1, got {epochs}")
    check(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    check(len(train) > 0, "training split is empty")
    check_teacher(teacher, distill, distill_temperature)
    device = torch.device(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    check(params, "the model has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr, eps=adam_eps, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    sched = make_scheduler(schedule, opt, total, steps_per_epoch, lr, calr_options)
    gen = torch.Generator().manual_seed(seed)
    history, step = [], 0
    best, best_state = None, None
    t0 = time.monotonic()
    for epoch in range(epochs):
        loss_sum, n_sum, lr_sum = 0.0, 0, 0.0
        for x, y in batches(train, batch_size, gen):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            fit = loss
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x)  # (B, C)
                fit = blend(loss, logits, soft, distill, distill_temperature)
            objective = fit + hooks.extra_loss(model)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if max_grad_norm:
                nn.utils.clip_grad_norm_(params, max_grad_norm)
            lr_sum += opt.param_groups[0]["lr"]
            opt.step()
            step += 1
            hooks.after_step(model, step, total)
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * y.numel()
            n_sum += y.numel()
        train_loss = loss_sum / n_sum
        if not math.isfinite(train_loss):
            raise LmshrinkError(f"training loss became NaN/inf in epoch {epoch + 1}; lower the learning rate")
        row = {"epoch": epoch + 1, "train_loss": train_loss, "mean_lr": lr_sum / steps_per_epoch}
        if dev is not None:
            ev = evaluate_accuracy(model, dev, device)
            row.update(dev_accuracy=ev["accuracy"], dev_loss=ev["loss"])
            if select_on_dev and (best is None or ev["accuracy"] >= best):
                best = ev["accuracy"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}" +
            (f"  dev acc {row['dev_accuracy']:.4f}" if dev is not None else "") + f"  lr {row['mean_lr']:.3g}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_dev_accuracy": best, "steps": step, "wall_s": time.monotonic() - t0,
            "schedule": schedule, "lr": lr, "adam_eps": adam_eps, "batch_size": batch_size, "epochs": epochs}


# --------------------------------------------------------------------------- model directories (CLI and benchmark)
DEFAULT_TRAIN = dict(epochs=6, batch_size=50, lr=1e-2, schedule="calr", adam_eps=0.01,
                     calr_options={"step_size": "half_epoch", "decay": 0.5})


def paper_rank(num_words: int, dim: int, keep: float) -> int:
    """Rank k of Acharya et al. 2019 for a kept share ``keep`` of a (V, d) embedding's parameters:
    ``k = int(keep * V * d / (V + d))``, so that ``k (V + d) <= keep * V * d`` (their ``DAN_LR`` code)."""
    check(0 < keep < 1, f"--keep must be in (0, 1), got {keep}")
    k = int(keep * num_words * dim / (num_words + dim))
    check(k >= 1, f"--keep {keep} gives rank 0 for a {num_words}x{dim} embedding; the smallest share with rank 1 is "
                  f"{(num_words + dim) / (num_words * dim):.4f}")
    return k


def prepare_data(dataset_dir, seed: int = 0, folds: int | None = None, fold: int = 0, test_fraction: float = 0.1,
                 skip_malformed: bool = False, vocab=None):
    """Load a data set folder and encode it. Returns (dataset, vocab, {split: EncodedSplit})."""
    from ..data.textcls import build_vocab, encode, load_textcls

    ds = load_textcls(dataset_dir, seed=seed, folds=folds, fold=fold, test_fraction=test_fraction,
                      skip_malformed=skip_malformed)
    vocab = vocab or build_vocab(ds.splits["train"])
    enc = {k: encode(v, vocab, ds.labels, where=f"{dataset_dir} ({k})") for k, v in ds.splits.items()}
    return ds, vocab, enc


def size_of(model: nn.Module) -> dict:
    """Parameters and theoretical bytes of the embedding and of the whole model."""
    from ..measure import layer_rows

    rows = layer_rows(model)
    emb = [r for r in rows if r["name"] == "encoder" or r["name"].startswith("encoder.")]
    return {"params": sum(r["params"] for r in rows), "bytes": sum(r["bits"] for r in rows) / 8,
            "embedding_params": sum(r["params"] for r in emb), "embedding_bytes": sum(r["bits"] for r in emb) / 8}


def save_classifier(model, out, vocab, textcls: dict, training: dict | None, metrics: dict, extra: dict | None = None) -> dict:
    """Write a model directory, then record its real size (bytes of weights + manifest) in its metrics."""
    from ..io import save_model_dir, update_manifest
    from ..measure import bytes_on_disk

    save_model_dir(model, out, vocab=vocab, extra={"task": "textcls", "textcls": textcls, "training": training,
                                                   "metrics": metrics, **(extra or {})})
    disk = bytes_on_disk(out)
    metrics = {**metrics, "bytes_on_disk": disk["total"], "weights_bytes": disk["weights"]}
    update_manifest(out, metrics=metrics)
    return metrics


def train_and_save_classifier(dataset_dir, out, model_name: str = "lstm", vectors: str | None = None,
                              data_dir=None, seed: int = 0, epochs: int | None = None, folds: int | None = None,
                              fold: int = 0, test_fraction: float = 0.1, skip_malformed: bool = False,
                              schedule: str | None = None, lr: float | None = None, batch_size: int | None = None,
                              device: str = "cpu", log=print) -> dict:
    """Train a classifier over pretrained vectors on a data set folder and save it to ``out``."""
    from pathlib import Path

    from ..data.textcls import embedding_matrix, resolve_vectors
    from ..models.classifier import build_classifier
    from .lm import resolve_device, seed_everything

    device = resolve_device(device)
    seed_everything(seed)
    ds, vocab, enc = prepare_data(dataset_dir, seed, folds, fold, test_fraction, skip_malformed)
    wv = resolve_vectors(vectors, data_dir)
    E, coverage = embedding_matrix(vocab, wv, seed)
    model = build_classifier(model_name, len(vocab), ds.num_classes, wv.dim)
    model.load_embedding(E)
    cfg = {**DEFAULT_TRAIN, **{k: v for k, v in dict(epochs=epochs, schedule=schedule, lr=lr, batch_size=batch_size).items()
                               if v is not None}}
    log(f"{ds.name}: {ds.split_info}; {len(vocab):,} words ({coverage['word_coverage']:.1%} with pretrained vectors)")
    res = train_classifier(model, enc["train"], enc["dev"], seed=seed, device=device, log=log, **cfg)
    test = evaluate_accuracy(model, enc["test"], device)
    textcls = {"dataset_dir": str(Path(dataset_dir).resolve()), "dataset": ds.summary(), "labels": ds.labels,
               "seed": seed, "folds": folds, "fold": fold, "test_fraction": test_fraction,
               "skip_malformed": skip_malformed, "model": model_name, "vectors": coverage}
    metrics = {"test_accuracy": test["accuracy"], "dev_accuracy": res["best_dev_accuracy"], **size_of(model)}
    metrics = save_classifier(model.cpu(), out, vocab, textcls, res, metrics)
    return {"model": model, "metrics": metrics, "dataset": ds.summary(), "vectors": coverage}


def _data_for(manifest: dict, dataset_dir=None):
    """Reload the splits a model was trained on (checksums must match) and encode them with its vocabulary."""
    from ..data import Vocabulary

    check(manifest.get("task") == "textcls", "this model directory does not hold a text classifier "
                                             "(train one with `lmshrink classify train`)")
    t = manifest["textcls"]
    d = dataset_dir or t["dataset_dir"]
    vocab = Vocabulary.from_json(manifest["vocab"])
    ds, vocab, enc = prepare_data(d, t["seed"], t.get("folds"), t.get("fold", 0), t.get("test_fraction", 0.1),
                                  t.get("skip_malformed", False), vocab=vocab)
    check(ds.labels == t["labels"], f"{d}: labels {ds.labels} differ from the model's {t['labels']}")
    old = t["dataset"]["checksums"]
    changed = sorted(k for k in set(old) | set(ds.checksums) if old.get(k) != ds.checksums.get(k))
    check(not changed, f"{d}: file(s) {', '.join(changed)} differ from the ones the model was trained on "
                       "(pass the original data set folder with --dataset)")
    return ds, vocab, enc


def evaluate_classifier_dir(model_dir, dataset_dir=None, split: str = "test", device: str = "cpu") -> dict:
    """Accuracy of a saved classifier on a split of its data set, plus its sizes."""
    from ..io import load_model_dir
    from ..measure import bytes_on_disk
    from .lm import resolve_device

    device = resolve_device(device)
    model, manifest = load_model_dir(model_dir, device=device)
    ds, vocab, enc = _data_for(manifest, dataset_dir)
    check(split in enc, f"split {split!r} not available; choose from {', '.join(enc)}")
    ev = evaluate_accuracy(model, enc[split], device)
    disk = bytes_on_disk(model_dir)
    return {"model_dir": str(model_dir), "split": split, "accuracy": ev["accuracy"], "loss": ev["loss"],
            "examples": ev["examples"], "bytes_on_disk": disk["total"], "weights_bytes": disk["weights"],
            **size_of(model.cpu()), "compressed_layers": manifest.get("compressed_layers", {}),
            "dataset": ds.name, "split_info": ds.split_info}


def compress_embedding(model: nn.Module, keep: float, vocab=None) -> dict:
    """Factorize ``model.encoder`` (V, d) by truncated SVD to the paper's rank for kept share ``keep``, in place,
    through the compression API (method ``svd`` with an explicit ``rank``). Returns the compress report row."""
    from ..compress import compress, make_config

    enc = model.encoder
    V, d = enc.weight.shape if isinstance(enc, nn.Embedding) else (enc.num_embeddings, enc.embedding_dim)
    check(isinstance(enc, nn.Embedding), "the model's embedding is already compressed; start from a dense model")
    k = paper_rank(V, d, keep)
    stats = {"word_counts": vocab.counts_tensor()} if vocab is not None else None
    report = compress(model, {"encoder": make_config("svd", rank=k)}, stats)
    return {**report[0], "keep": keep, "rank": k}


def compress_classifier_dir(model_dir, out, keep: float, retrain_epochs: int = 2, dataset_dir=None,
                            schedule: str | None = None, lr: float | None = None, seed: int | None = None,
                            device: str = "cpu", log=print) -> dict:
    """Online low rank (Acharya et al. 2019): SVD of the trained embedding to kept share ``keep``, then
    retrain factors and network on the task; saves to ``out``. ``retrain_epochs = 0`` is offline SVD."""
    from ..io import load_model_dir
    from .lm import resolve_device, seed_everything

    check(retrain_epochs >= 0, f"--retrain-epochs must be >= 0, got {retrain_epochs}")
    device = resolve_device(device)
    model, manifest = load_model_dir(model_dir, device="cpu")
    ds, vocab, enc = _data_for(manifest, dataset_dir)
    seed = manifest["textcls"]["seed"] if seed is None else seed
    seed_everything(seed)
    before = evaluate_accuracy(model, enc["test"])["accuracy"]
    row = compress_embedding(model, keep, vocab)
    offline = evaluate_accuracy(model, enc["test"])
    offline_dev = evaluate_accuracy(model, enc["dev"])["accuracy"]
    log(f"svd rank {row['rank']} (keep {keep:g}): embedding {row['dense_params']:,} -> {row['params']:,} params; "
        f"test accuracy {before:.4f} -> {offline['accuracy']:.4f} before retraining")
    training = None
    if retrain_epochs:
        cfg = {**DEFAULT_TRAIN, "epochs": retrain_epochs, **{k: v for k, v in dict(schedule=schedule, lr=lr).items() if v is not None}}
        training = train_classifier(model, enc["train"], enc["dev"], seed=seed, device=device, log=log, **cfg)
    test = evaluate_accuracy(model, enc["test"], device)["accuracy"]
    metrics = {"test_accuracy": test, "dense_test_accuracy": before, "offline_test_accuracy": offline["accuracy"],
               "offline_dev_accuracy": offline_dev, "dev_accuracy": training["best_dev_accuracy"] if training else offline_dev,
               **size_of(model.cpu())}
    comp = {"method": "online_low_rank" if retrain_epochs else "offline_svd", "keep": keep, "rank": row["rank"],
            "rank_formula": "int(keep * V * d / (V + d))", "retrain_epochs": retrain_epochs, "source": str(model_dir),
            "report": row}
    metrics = save_classifier(model.cpu(), out, vocab, manifest["textcls"], training, metrics, {"compression": comp})
    return {"metrics": metrics, "compression": comp}
