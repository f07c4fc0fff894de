"""The compression API: method registry, configs, plans and the in-place ``compress`` transform.

Shaped after torchao's ``quantize_(model, config, filter_fn)``: one config dataclass per method, a
registered function that turns one dense module into one compressed module, and a driver that swaps
modules in place. A *plan* maps module-name patterns to configs, like PEFT's ``target_modules``.

Patterns: an exact module name (``encoder``), a glob (``rnn.layers.*.hh``) or a regular expression
prefixed with ``re:`` (``re:rnn\\.layers\\.\\d+\\.ih``). A pattern that matches no compressible
module is an error, never a silent no-op.

Tying: when a plan touches one of two modules that share a weight (a tied embedding and softmax),
the default policy ``share`` compresses the shared weight once, as an embedding-flavour layer, and
turns the softmax into a :class:`~lmshrink.layers.TiedProjection` of it; ``untie`` copies the weight
and compresses each side on its own, and the report says so. Nothing is ever untied silently.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn as nn

from .errors import LmshrinkError, check
from .layers import CompressedLayer, TiedProjection


# --------------------------------------------------------------------------- configs and registry
@dataclass
class MethodConfig:
    """Base of every method's config. Subclasses are dataclasses; ``validate`` raises LmshrinkError."""

    method: ClassVar[str] = ""

    def validate(self) -> None:
        pass

    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @staticmethod
    def from_dict(d: dict) -> MethodConfig:
        d = dict(d)
        name = d.pop("method", None)
        check(name is not None, "a plan entry has no 'method'")
        method = get_method(name)
        known = {f.name for f in fields(method.config_cls)}
        unknown = sorted(set(d) - known)
        check(not unknown, f"unknown option(s) {', '.join(unknown)} for method {name!r}; options: {', '.join(sorted(known))}")
        try:
            cfg = method.config_cls(**d)
        except TypeError as e:
            raise LmshrinkError(f"bad options for method {name!r}: {e}") from None
        cfg.validate()
        return cfg


@dataclass
class SizeBudget(MethodConfig):
    """How big a compressed layer may be: exactly one of ``rank`` (int), ``fraction`` (kept share of the
    dense layer's bits, in (0, 1)) or ``ratio`` (dense bits / compressed bits, > 1).

    Ratios are measured in theoretical bits against the dense fp32 layer, so factorized, sparse and
    quantized methods are compared on one scale. Methods derive ranks/densities from the budget and
    refuse budgets that cannot be met or would not make the layer smaller.
    """

    rank: int | None = None
    ratio: float | None = None
    fraction: float | None = None

    def validate_budget(self) -> None:
        given = [n for n in ("rank", "ratio", "fraction") if getattr(self, n) is not None]
        check(len(given) <= 1, f"give one of rank, ratio, fraction (got {', '.join(given)})")
        if self.rank is not None:
            check(isinstance(self.rank, int) and self.rank >= 1, f"rank must be a positive integer, got {self.rank}")
        if self.ratio is not None:
            check(math.isfinite(self.ratio) and self.ratio > 1, f"ratio must be > 1, got {self.ratio}")
        if self.fraction is not None:
            check(0 < self.fraction < 1, f"fraction must be in (0, 1), got {self.fraction}")

    def target_ratio(self) -> float | None:
        if self.ratio is not None:
            return float(self.ratio)
        if self.fraction is not None:
            return 1.0 / self.fraction
        return None


@dataclass
class LayerContext:
    """What a method knows about the module it compresses."""

    name: str
    flavour: str  # "embedding" or "linear"
    word_counts: torch.Tensor | None = None  # (V,) training counts, for vocabulary layers only
    num_gates: int = 1  # 4 for the ih/hh maps of an LSTM layer (gate blocks along the output axis)

    def dense_bits(self, module: nn.Module) -> int:
        return module.weight.numel() * 32


@dataclass
class Method:
    name: str
    config_cls: type
    apply: Callable[[nn.Module, MethodConfig, LayerContext], CompressedLayer]
    flavours: tuple[str, ...]
    needs_counts: bool = False
    doc: str = ""


METHODS: dict[str, Method] = {}


def register_method(name: str, config_cls: type, flavours=("embedding", "linear"), needs_counts: bool = False):
    """Decorator for ``fn(module, config, ctx) -> CompressedLayer``; one line registers a method."""

    def deco(fn):
        check(name not in METHODS, f"method {name} registered twice")
        config_cls.method = name
        METHODS[name] = Method(name, config_cls, fn, tuple(flavours), needs_counts, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_method(name: str) -> Method:
    from . import methods  # noqa: F401 - registers the built-in methods

    if name not in METHODS:
        raise LmshrinkError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_config(method: str, **options) -> MethodConfig:
    return MethodConfig.from_dict({"method": method, **options})


# --------------------------------------------------------------------------- plans
@dataclass
class Plan:
    """Ordered pattern -> config entries plus the tying policy (``share`` or ``untie``)."""

    layers: dict[str, MethodConfig] = field(default_factory=dict)
    tying: str = "share"

    def to_dict(self) -> dict:
        return {"tying": self.tying, "layers": {p: c.to_dict() for p, c in self.layers.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        unknown = set(d) - {"tying", "layers"}
        check(not unknown, f"plan: unknown key(s) {', '.join(sorted(unknown))}; expected 'tying' and [layers.\"PATTERN\"] tables")
        layers = d.get("layers")
        check(isinstance(layers, dict) and layers, "plan has no [layers.\"PATTERN\"] table")
        tying = d.get("tying", "share")
        check(tying in ("share", "untie"), f"plan: tying must be 'share' or 'untie', got {tying!r}")
        return cls({p: MethodConfig.from_dict(c) for p, c in layers.items()}, tying)


def load_plan(path: str | Path) -> Plan:
    """Read a TOML plan::

        tying = "share"            # optional
        [layers."encoder"]
        method = "groupreduce"
        ratio = 8
        num_blocks = 5
    """
    p = Path(path)
    check(p.is_file(), f"plan file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LmshrinkError(f"plan file {p} is not valid TOML: {e}") from None
    return Plan.from_dict(data)


def vocab_plan(model: nn.Module, config: MethodConfig) -> Plan:
    """One method on the vocabulary layers (every embedding, and the softmax), tying respected."""
    names = list(getattr(model, "vocab_modules", ("encoder", "decoder")))
    return Plan({n: config for n in names}, "share")


# --------------------------------------------------------------------------- driver
def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern == name


def _compressible(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.Linear)) and n}


def _gates_of(model: nn.Module, name: str) -> int:
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return int(getattr(parent, "num_gates", 1))


def check_counts(counts, vocab_size: int, where: str) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    check(counts.dim() == 1, f"{where}: frequency vector must be 1-D, got shape {tuple(counts.shape)}")
    check(counts.numel() == vocab_size,
          f"{where}: frequency vector has {counts.numel()} entries but the layer has {vocab_size} words")
    check(bool(torch.isfinite(counts).all()), f"{where}: frequency vector holds NaN or inf")
    check(bool((counts >= 0).all()), f"{where}: frequency vector holds negative counts")
    check(float(counts.sum()) > 0, f"{where}: frequency vector sums to zero")
    return counts


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def compress(model: nn.Module, plan: Plan | dict, stats: dict | None = None, progress=None) -> list[dict]:
    """Swap the modules a plan names for compressed ones, in place. Returns one report row per module.

    ``stats`` may hold ``word_counts``: the (V,) training counts of the vocabulary, required by
    frequency-aware methods (GroupReduce) and checked against every vocabulary layer's size.
    Validation happens before any module is swapped, so a bad plan leaves the model untouched.
    """
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan) if "layers" in plan else Plan(dict(plan))
    for cfg in plan.layers.values():
        cfg.validate()
    stats = stats or {}
    candidates = _compressible(model)
    already = [n for n, m in model.named_modules() if isinstance(m, CompressedLayer)]

    # 1. resolve patterns -> module names (first matching pattern wins, like a routing table)
    assignment: dict[str, tuple[str, MethodConfig]] = {}
    for pattern, cfg in plan.layers.items():
        hits = [n for n in candidates if _matches(pattern, n)]
        if not hits:
            again = [n for n in already if _matches(pattern, n)]
            hint = f" ({', '.join(again)} already compressed)" if again else f"; compressible modules: {', '.join(candidates) or 'none'}"
            raise LmshrinkError(f"plan pattern {pattern!r} matches no compressible module{hint}")
        for n in hits:
            assignment.setdefault(n, (pattern, cfg))

    # 2. tying: group modules that share their weight Parameter
    owners: dict[int, list[str]] = {}
    for n, m in candidates.items():
        owners.setdefault(id(m.weight), []).append(n)
    tied_to: dict[str, str] = {}  # follower -> leader (the embedding-flavour module)
    for group in owners.values():
        if len(group) < 2 or not any(n in assignment for n in group):
            continue
        if plan.tying == "untie":
            for n in group[1:]:
                m = candidates[n]
                m.weight = nn.Parameter(m.weight.detach().clone())
            continue
        leader = next((n for n in group if isinstance(candidates[n], nn.Embedding)), group[0])
        configs = {assignment[n][1].to_dict().__repr__() for n in group if n in assignment}
        check(len(configs) == 1, f"tied modules {', '.join(group)} get different configs; give one config or set tying = \"untie\"")
        cfg_entry = next(assignment[n] for n in group if n in assignment)
        for n in group:
            assignment[n] = cfg_entry
            if n != leader:
                tied_to[n] = leader

    # 3. validate everything before touching the model
    vocab_counts = stats.get("word_counts")
    vocab_names = set(getattr(model, "vocab_modules", ("encoder", "decoder")))
    jobs = []
    for n, (pattern, cfg) in assignment.items():
        m = candidates[n]
        flavour = "embedding" if isinstance(m, nn.Embedding) else "linear"
        method = get_method(cfg.method)
        if n in tied_to:
            continue
        check(flavour in method.flavours,
              f"method {cfg.method!r} does not apply to {flavour} layers (module {n!r}); it takes {', '.join(method.flavours)}")
        check(bool(torch.isfinite(m.weight).all()), f"module {n!r} has NaN or inf weights; refusing to compress")
        counts = None
        is_vocab = flavour == "embedding" or n in vocab_names
        if vocab_counts is not None and is_vocab:
            V = m.weight.shape[0]
            counts = check_counts(vocab_counts, V, f"module {n!r}")
        if method.needs_counts:
            check(counts is not None, f"method {cfg.method!r} needs word counts for module {n!r} (a vocabulary layer)")
        ctx = LayerContext(n, flavour, counts, _gates_of(model, n))
        jobs.append((n, m, cfg, method, ctx))

    # 4. compress (each job may still refuse an impossible budget before anything is swapped)
    results = []
    for n, m, cfg, method, ctx in (progress(jobs) if progress else jobs):
        new = method.apply(m, cfg, ctx)
        new.method_config = cfg.to_dict()
        results.append((n, m, new, cfg, ctx))
    report = []
    for n, old, new, cfg, ctx in results:
        _set_module(model, n, new)
        dense_bits = old.weight.numel() * 32 + (old.bias.numel() * 32 if getattr(old, "bias", None) is not None else 0)
        report.append({"module": n, "method": cfg.method, "config": cfg.to_dict(), "layer_type": new.layer_type,
                       "dense_params": sum(p.numel() for p in old.parameters()), "params": new.num_params(),
                       "dense_bits": dense_bits, "bits": new.bits()})
    for follower, leader in tied_to.items():
        old = candidates[follower]
        tp = TiedProjection(leader, old.in_features, old.out_features, old.bias is not None)
        if old.bias is not None:
            tp.bias.data.copy_(old.bias.data)
        tp.bind(model.get_submodule(leader))
        tp.method_config = {"tied_to": leader}
        _set_module(model, follower, tp)
        report.append({"module": follower, "method": "tied", "config": {"tied_to": leader}, "layer_type": tp.layer_type,
                       "dense_params": old.bias.numel() if old.bias is not None else 0, "params": tp.num_params(),
                       "dense_bits": 32 * (old.bias.numel() if old.bias is not None else 0), "bits": tp.bits()})
    return report


def replace_modules_(model: nn.Module, names: list[str], make: Callable[[nn.Module], nn.Module]) -> list[str]:
    """Swap each named module for ``make(module)`` in place, keeping its ``method_config``, then re-bind tied
    softmaxes to the new modules. Returns ``names``."""
    for name in names:
        old = model.get_submodule(name)
        new = make(old)
        new.method_config = getattr(old, "method_config", None)
        _set_module(model, name, new)
    if names:
        rebind_tied(model)
    return names


@contextmanager
def training_forms(model: nn.Module):
    """Retrain layers in their training form: inside the block every layer with a ``training_form()`` (CSR
    pruned layers) is swapped for it, and on leaving the block for its ``finalize()``, in place; tied
    softmaxes follow. Why: a storage form that is compact on disk can be slow or uncapturable to train.
    The model's ``state_dict`` inside the block is the training form's."""
    names = [n for n, m in model.named_modules() if callable(getattr(m, "training_form", None))]
    replace_modules_(model, names, lambda m: m.training_form())
    try:
        yield names
    finally:
        replace_modules_(model, names, lambda m: m.finalize())


def rebind_tied(model: nn.Module) -> None:
    """Point every TiedProjection at its source module again (after loading or moving modules)."""
    for m in model.modules():
        if isinstance(m, TiedProjection):
            m.bind(model.get_submodule(m.source_name))
