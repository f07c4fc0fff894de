"""benchmarks/speed.py end to end on a tiny model: every row timed beside dense, the breakdown present and sane."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402


def test_speed_writes_ratios_and_breakdown(tmp_path):
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "svd,groupreduce", "--devices", "cpu", "--repeats", "2",
                     "--rounds", "1", "--breakdown", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "svd", "groupreduce"}
    assert rows["groupreduce"]["config"]["num_blocks"] == 3
    for r in rows.values():
        parts = r["cpu_ms_parts"]
        assert set(parts) == {"encoder", "rnn", "decoder"} and all(v > 0 for v in parts.values())
        assert r["cpu_vs_dense"] > 0
    assert rows["dense"]["cpu_vs_dense"] == pytest.approx(1.0)
    assert "cpu ms decoder" in out.with_suffix(".md").read_text()


def test_speed_refuses_unknown_method(tmp_path, capsys):
    assert speed.main(["--methods", "nope", "--devices", "cpu", "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_speed_times_grouped_gemm_rows(tmp_path):
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "svd,groupreduce,groupreduce+q8", "--devices", "cpu",
                     "--repeats", "2", "--rounds", "2", "--breakdown", "--group-gemms", "1,2", "--out", str(out)])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense", "svd", "groupreduce", "groupreduce[g1]", "groupreduce[g2]", "groupreduce+q8",
                         "groupreduce+q8[g1]", "groupreduce+q8[g2]"}
    assert rows["groupreduce[g2]"]["group_gemms"] == 2 and "group_gemms" not in rows["groupreduce"]
    assert all(len(r["cpu_rounds"]) == 2 and r["cpu_vs_dense"] > 0 and "cpu_ms_parts" in r for r in rows.values())
    assert rows["groupreduce[g1]"]["vocab_ratio"] == rows["groupreduce"]["vocab_ratio"]
    assert "| groupreduce[g2] |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("bad", ["0", "2,x", "-1", "1.5"])
def test_speed_refuses_bad_group_gemms(tmp_path, capsys, bad):
    out = tmp_path / "x.json"
    rc = speed.main(["--methods", "groupreduce", "--devices", "cpu", "--group-gemms", bad, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--group-gemms" in err and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------ --cuda-graph


def tiny_models(group_gemms: int | None = None) -> dict:
    """A tiny dense LSTM LM and its GroupReduce copy (embedding and softmax), as speed.py builds them."""
    import copy

    import torch

    from lmshrink.compress import Plan, compress, make_config
    from lmshrink.layers.block_low_rank import set_group_gemms
    from lmshrink.models import LSTMLanguageModel

    torch.manual_seed(0)
    V = 300
    dense = LSTMLanguageModel(V, hidden=16, layers=2, init_scale=0.1).eval()
    gr = copy.deepcopy(dense)
    cfg = make_config(**speed.method_configs(4, 12, num_blocks=3)["groupreduce"])
    counts = torch.round(V * 5.0 / torch.arange(1, V + 1)) + 1
    compress(gr, Plan({"encoder": cfg, "decoder": cfg}), {"word_counts": counts})
    set_group_gemms(gr, group_gemms)
    return {"dense": dense, "groupreduce": gr.eval()}


def test_cuda_graph_timing_needs_cuda():
    import torch

    from lmshrink.errors import LmshrinkError
    from lmshrink.measure import GraphedLMForward, lm_tokens_per_second

    model = tiny_models()["dense"]
    with pytest.raises(LmshrinkError, match="needs a CUDA device"):
        lm_tokens_per_second(model, 300, "cpu", batch_size=2, seq_len=5, warmup=1, repeats=2, cuda_graph=True)
    with pytest.raises(LmshrinkError, match="CUDA device"):
        GraphedLMForward(model, torch.zeros(5, 2, dtype=torch.long))


def test_speed_cuda_graph_on_cpu_adds_no_graph_rows(tmp_path):
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "svd,groupreduce", "--devices", "cpu", "--repeats", "2",
                     "--rounds", "1", "--group-gemms", "2", "--cuda-graph", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "svd", "groupreduce", "groupreduce[g2]"}
    assert not any("cuda_graph" in r for r in rows.values())
    assert res["setting"]["cuda_graph"] is True
    assert "[graph]" not in out.with_suffix(".md").read_text()


def test_speed_cuda_graph_rows_compare_with_dense_graph(tmp_path, monkeypatch):
    """The rows' bookkeeping on a pretend CUDA device (CPU CI): graph rows only there, each against dense[graph]."""
    real = speed.lm_tokens_per_second
    calls = []

    def fake(model, V, dev, **kw):
        if dev != "cuda":
            return real(model, V, dev, **kw)
        calls.append((kw["cuda_graph"], kw["fused"]))
        base = 1000.0 * (3 if kw["cuda_graph"] else 1)  # graphs 3x faster; compressed models 2x the dense speed
        return {"tokens_per_s": base * (1 if type(model.decoder).__name__ == "Linear" else 2)}

    real_parts = speed.lm_forward_breakdown
    monkeypatch.setattr(speed, "lm_tokens_per_second", fake)
    monkeypatch.setattr(speed, "lm_forward_breakdown", lambda model, V, dev, **kw: real_parts(model, V, "cpu", **kw))
    monkeypatch.setattr(speed.torch.cuda, "get_device_name", lambda *_: "pretend GPU")
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "groupreduce", "--devices", "cpu,cuda", "--repeats", "2",
                     "--rounds", "2", "--group-gemms", "2", "--cuda-graph", "--breakdown", "--out", str(out)])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["dense", "groupreduce", "groupreduce[g2]", "dense[graph]", "groupreduce[graph]",
                          "groupreduce[g2][graph]"]
    for name, r in rows.items():
        graph = name.endswith("[graph]")
        assert r.get("cuda_graph", False) is graph
        assert ("cpu_tokens_per_s" in r) is not graph
        assert ("cpu_ms_parts" in r) is not graph and ("cuda_ms_parts" in r) is not graph  # breakdowns are eager
        assert r["cuda_tokens_per_s"] == (3000.0 if graph else 1000.0) * (1 if name.startswith("dense") else 2)
        assert r["cuda_vs_dense"] == pytest.approx(1.0 if name.startswith("dense") else 2.0)  # graph vs graph
    assert rows["groupreduce[g2][graph]"]["group_gemms"] == 2
    assert sorted(calls) == sorted([(False, False)] * 6 + [(True, False)] * 6)  # 3 rows of each, 2 rounds
    table = out.with_suffix(".md").read_text()
    assert "| groupreduce[g2][graph] |" in table and "against dense[graph]" in table


@pytest.mark.gpu
@pytest.mark.usefixtures("exact_fp32")
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("group_gemms", [None, 2])
def test_cuda_graph_replay_equals_eager_logits(group_gemms):
    import torch

    from lmshrink.measure import GraphedLMForward, lm_tokens_per_second

    for name, model in tiny_models(group_gemms).items():
        model = model.cuda().eval()
        g = torch.Generator().manual_seed(1)
        windows = [torch.randint(0, 300, (35, 4), generator=g).cuda() for _ in range(3)]
        graphed = GraphedLMForward(model, windows[0], warmup=2)
        state = model.init_state(4, "cuda")
        with torch.no_grad():
            for w in windows:  # the hidden state carries over between replays as between eager windows
                want, state = model(w, state)
                graphed.ids.copy_(w)
                got = graphed.replay().clone()
                torch.cuda.synchronize()
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
                for (h, c), (h2, c2) in zip(graphed.state, state):
                    torch.testing.assert_close(h, h2, atol=1e-4, rtol=1e-4)
                    torch.testing.assert_close(c, c2, atol=1e-4, rtol=1e-4)
        res = lm_tokens_per_second(model, 300, "cuda", batch_size=4, warmup=2, repeats=3, cuda_graph=True)
        assert res["cuda_graph"] is True and res["tokens_per_s"] > 0


def test_speed_records_resident_memory_with_each_rows_own_caches(tmp_path):
    """Knob rows share a model object: each row's memory is what its own timing left (the 4-bit row holds the int4
    kernel's packed copy on CPU, its [float] twin does not; the block-diagonal operands only where they are on)."""
    out = tmp_path / "speed.json"
    rc = speed.main(["--vocab", "300", "--hidden", "16", "--layers", "1", "--rate", "4", "--gq-rate", "12",
                     "--num-blocks", "3", "--methods", "groupreduce,quantize-4bit", "--devices", "cpu",
                     "--repeats", "1", "--rounds", "1", "--float-int4", "--blocks-path", "--out", str(out)])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    dense = rows["dense"]
    assert dense["cpu_cache_bytes"] == 0 and dense["cpu_resident_bytes"] > 0
    assert rows["quantize-4bit"]["cpu_cache_bytes"] > 0 and rows["quantize-4bit[float]"]["cpu_cache_bytes"] == 0
    # GroupReduce on CPU keeps index maps only (the block-diagonal path is for CUDA), the same with the path off
    assert rows["groupreduce"]["cpu_cache_bytes"] == rows["groupreduce[blocks]"]["cpu_cache_bytes"]
    gr = rows["groupreduce"]
    assert 0 < gr["cpu_resident_bytes"] - gr["cpu_cache_bytes"] < dense["cpu_resident_bytes"]  # its state is smaller
    assert "cpu resident MiB" in out.with_suffix(".md").read_text()
