"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' matrices are tiny: extra OpenMP threads only add contention (on a shared 2-core box, SVDs
    ran 100x slower with two threads than with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def exact_fp32():
    """TF32 off for matmuls and cuDNN during a test, so GPU results can be held to CPU tolerances."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def bench_module():
    """Load a script of ``benchmarks/`` (not a package) as a module: ``bench_module("schedules")``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def reload_as_old_model(tmp_path, capsys):
    """Save a model whose packed layers use the padded layout as lmshrink wrote it before layouts existed (no
    ``layout`` key in any manifest spec), then load it back through ``load_model_dir`` and through the CLI's
    ``lmshrink info``. Checks that the packed layers come back padded, the same size and with exactly the same
    outputs on ``ids``; returns the loaded model."""
    import json

    from lmshrink.cli import main
    from lmshrink.io import MANIFEST, load_model_dir, save_model_dir
    from lmshrink.layers import CompressedLayer
    from lmshrink.layers.packing import group_layout
    from lmshrink.layers.quantized import PackedMatrix

    def packed(model):
        return {n: m.layout for n, m in model.named_modules() if isinstance(m, PackedMatrix)}

    def layers(model):
        return {n: (m.layer_type, m.bits()) for n, m in model.named_modules() if isinstance(m, CompressedLayer)}

    def run(model, ids, name="old"):
        model.eval()
        assert packed(model) and set(packed(model).values()) == {"padded"}
        # the test means something only where the balanced layout would store other shapes
        assert any(m.g != group_layout(m.cols, m.group_size, "balanced")[0]
                   for m in model.modules() if isinstance(m, PackedMatrix))
        with torch.no_grad():
            want = model(ids)[0]
        d = tmp_path / name
        save_model_dir(model, d)
        manifest = json.loads((d / MANIFEST).read_text())
        for entry in manifest["compressed_layers"].values():
            assert entry["spec"].pop("layout", "padded") == "padded"
        (d / MANIFEST).write_text(json.dumps(manifest))  # only the manifest changed: the weights' digest holds
        loaded, _ = load_model_dir(d)
        assert packed(loaded) == packed(model) and layers(loaded) == layers(model)
        assert all(getattr(m, "layout", "padded") in ("padded", None) for m in loaded.modules()
                   if isinstance(m, CompressedLayer))
        with torch.no_grad():
            assert torch.equal(loaded(ids)[0], want)
        capsys.readouterr()
        assert main(["info", str(d), "--json"]) == 0
        rows = {r["name"]: r["bits"] for r in json.loads(capsys.readouterr().out)["layers"]}
        assert {n: rows[n] for n in layers(model)} == {n: bits for n, (_, bits) in layers(model).items()}
        return loaded

    return run
