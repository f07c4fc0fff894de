"""Text classification: loader, classifiers, online low-rank embedding compression, CLI round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmshrink
from lmshrink.data.textcls import build_vocab, embedding_matrix, load_textcls, read_textcls_file
from lmshrink.data.vectors import WordVectors
from lmshrink.errors import LmshrinkError
from lmshrink.layers import LowRankEmbedding
from lmshrink.models.classifier import CNNClassifier, DANClassifier, LSTMClassifier
from lmshrink.train.classify import compress_embedding, evaluate_accuracy, paper_rank, train_classifier


# --------------------------------------------------------------------------- loader
def test_reads_latin1_crlf_and_blank_lines(tmp_path):
    f = tmp_path / "x.train"
    f.write_bytes(b"0 caf\xe9 au lait\r\n\r\n1 Hello World\r\n\n2 last line without newline")
    ex, rep = read_textcls_file(f)
    assert rep.encoding == "latin-1"
    assert [e.label for e in ex] == [0, 1, 2]
    assert ex[0].tokens == ["café", "au", "lait"]
    assert ex[1].tokens == ["hello", "world"]  # lowercased for uncased GloVe
    assert rep.blank_lines == 2


def test_utf8_file_and_final_newline(tmp_path):
    f = tmp_path / "y.test"
    f.write_text("1 naïve example\n0 second\n", encoding="utf-8")
    ex, rep = read_textcls_file(f)
    assert rep.encoding == "utf-8" and rep.blank_lines == 0 and ex[0].tokens[0] == "naïve"


@pytest.mark.parametrize("line,why", [("hello world", "not an integer"), ("3", "no text"), ("1    ", "no text"),
                                      ("-1 neg label", "negative"), ("x1 t", "not an integer")])
def test_malformed_lines_name_file_and_line(tmp_path, line, why):
    f = tmp_path / "d.train"
    f.write_text(f"0 fine line\n{line}\n1 ok\n")
    with pytest.raises(LmshrinkError, match=rf"d\.train:2: .*{why}"):
        read_textcls_file(f)
    ex, rep = read_textcls_file(f, skip_malformed=True)
    assert len(ex) == 2 and len(rep.malformed) == 1 and ":2:" in rep.malformed[0]


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "a.train").write_text("\n\n")
    with pytest.raises(LmshrinkError, match="empty"):
        read_textcls_file(tmp_path / "a.train")


def _write(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{y} {t}\n" for y, t in rows))


def test_label_sets_must_agree_between_splits(tmp_path):
    _write(tmp_path / "ds", "s.train", [(0, "a b"), (1, "c d"), (0, "e")])
    _write(tmp_path / "ds", "s.test", [(0, "a"), (2, "c")])
    with pytest.raises(LmshrinkError, match=r"s\.test: label set \[0, 2\] differs"):
        load_textcls(tmp_path / "ds")


def test_standard_splits_and_dev_carved_from_train(tmp_path):
    rows = [(i % 2, f"w{i} x") for i in range(40)]
    _write(tmp_path / "ds", "set.train.all", rows)
    _write(tmp_path / "ds", "set.test.all", rows[:6])
    ds = load_textcls(tmp_path / "ds", seed=3)
    assert len(ds.splits["test"]) == 6 and len(ds.splits["dev"]) == 4 and len(ds.splits["train"]) == 36
    assert "standard" in ds.split_info


def test_single_all_file_seeded_split_and_folds(tmp_path):
    _write(tmp_path / "mr", "x.all", [(i % 2, f"w{i} y") for i in range(50)])
    a, b = load_textcls(tmp_path / "mr", seed=1), load_textcls(tmp_path / "mr", seed=1)
    c = load_textcls(tmp_path / "mr", seed=2)
    key = lambda d: [e.tokens[0] for e in d.splits["test"]]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c) and len(key(a)) == 5
    tests = [set(key(load_textcls(tmp_path / "mr", seed=0, folds=5, fold=k))) for k in range(5)]
    assert sum(len(t) for t in tests) == 50 and len(set().union(*tests)) == 50  # folds partition the set
    with pytest.raises(LmshrinkError, match="fold must be"):
        load_textcls(tmp_path / "mr", folds=5, fold=5)


def test_no_coverage_is_an_error():
    vocab = build_vocab(load_like([(0, "aa bb"), (1, "cc")]))
    wv = WordVectors(["zz", "yy"], np.ones((2, 4), dtype=np.float32), "tiny")
    with pytest.raises(LmshrinkError, match="none of the 3 vocabulary words has a vector"):
        embedding_matrix(vocab, wv)
    wv2 = WordVectors(["bb", "yy"], np.full((2, 4), 7, dtype=np.float32), "tiny")
    E, cov = embedding_matrix(vocab, wv2)
    assert cov["covered_words"] == 1 and np.allclose(E[vocab.index["bb"]], 7) and np.allclose(E[0], 0)


def load_like(rows):
    from lmshrink.data.textcls import Example

    return [Example(y, t.split()) for y, t in rows]


# --------------------------------------------------------------------------- models and low rank
@pytest.mark.parametrize("cls", [LSTMClassifier, DANClassifier, CNNClassifier])
def test_padding_does_not_change_predictions(cls):
    torch.manual_seed(0)
    m = cls(50, 3, 8).eval()
    x = torch.randint(2, 50, (1, 6))
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    assert torch.allclose(m(x), m(padded), atol=1e-5)


@pytest.mark.parametrize("V,d,p", [(8147, 50, 0.5), (8147, 50, 0.2), (8147, 50, 0.1), (8147, 50, 0.05), (1000, 300, 0.1)])
def test_low_rank_shapes_and_params_follow_the_paper_formula(V, d, p):
    k = int(p * V * d / (V + d))
    assert paper_rank(V, d, p) == k
    m = DANClassifier(V, 2, d)
    row = compress_embedding(m, p)
    assert isinstance(m.encoder, LowRankEmbedding) and row["rank"] == k
    assert tuple(m.encoder.A.shape) == (V, k) and tuple(m.encoder.B.shape) == (k, d)
    assert m.encoder.num_params() == k * (V + d) <= p * V * d
    assert m.encoder.A.requires_grad and m.encoder.B.requires_grad  # online: factors keep training


def test_rank_zero_is_refused():
    with pytest.raises(LmshrinkError, match="rank 0"):
        paper_rank(100, 4, 0.05)


def _tiny_task(n=120, V=30, seed=0):
    """Label = whether the sentence holds more 'positive' words (ids < V/2) than negative ones."""
    g = torch.Generator().manual_seed(seed)
    from lmshrink.data.textcls import EncodedSplit

    ids, ys = [], []
    for _ in range(n):
        t = int(torch.randint(3, 8, (1,), generator=g))
        x = torch.randint(2, V, (t,), generator=g)
        ids.append(x)
        ys.append(int((x < V // 2 + 1).sum() * 2 > t))
    return EncodedSplit(ids, torch.tensor(ys), 0.0)


def test_retraining_lowers_the_loss_after_compression():
    torch.manual_seed(0)
    data = _tiny_task()
    m = DANClassifier(30, 2, 16, hidden=16, dropout=0.0)
    train_classifier(m, data, None, epochs=3, batch_size=20, lr=1e-2, schedule="constant", adam_eps=1e-8, log=lambda *_: None)
    compress_embedding(m, 0.3)
    before = evaluate_accuracy(m, data)["loss"]
    train_classifier(m, data, None, epochs=4, batch_size=20, lr=1e-2, schedule="calr", adam_eps=1e-8,
                     calr_options={"step_size": 3}, log=lambda *_: None)
    after = evaluate_accuracy(m, data)["loss"]
    assert after < before
    assert isinstance(m.encoder, LowRankEmbedding)


def test_retraining_against_the_dense_classifier_brings_the_compressed_one_towards_it():
    """train_classifier(teacher=dense, distill=1): after compression the model's predictions move towards the dense
    model's (KL on the data falls, and further than the same retraining on labels alone); bad settings are refused."""
    import copy

    import torch.nn.functional as F

    from lmshrink.errors import LmshrinkError

    torch.manual_seed(0)
    data = _tiny_task()
    dense = DANClassifier(30, 2, 16, hidden=16, dropout=0.0)
    train_classifier(dense, data, None, epochs=3, batch_size=20, lr=1e-2, schedule="constant", adam_eps=1e-8,
                     log=lambda *_: None)

    def kl(model) -> float:
        model.eval()
        with torch.no_grad():
            x = torch.nn.utils.rnn.pad_sequence(data.ids, batch_first=True)
            return float(F.kl_div(torch.log_softmax(model(x), -1), torch.log_softmax(dense(x), -1), log_target=True,
                                  reduction="batchmean"))

    runs = {}
    for name, kw in (("labels", {}), ("teacher", {"teacher": copy.deepcopy(dense), "distill": 1.0})):
        m = copy.deepcopy(dense)
        compress_embedding(m, 0.1)
        runs["start"] = kl(m)
        train_classifier(m, data, None, epochs=4, batch_size=20, lr=1e-2, schedule="constant", adam_eps=1e-8,
                         log=lambda *_: None, select_on_dev=False, **kw)
        runs[name] = kl(m)
    assert runs["teacher"] < runs["start"] and runs["teacher"] < runs["labels"], runs
    with pytest.raises(LmshrinkError, match="both a teacher model and a weight"):
        train_classifier(copy.deepcopy(dense), data, None, epochs=1, distill=0.5, log=lambda *_: None)
    with pytest.raises(LmshrinkError, match="distillation weight"):
        train_classifier(copy.deepcopy(dense), data, None, epochs=1, teacher=dense, distill=2.0, log=lambda *_: None)


def test_training_calls_the_hooks():
    calls = []

    class Probe(torch.nn.Module):
        def training_step_hook(self, progress, step):
            calls.append((progress, step))

        def extra_loss(self):
            calls.append("loss")
            return torch.zeros(())

    m = DANClassifier(30, 2, 8, hidden=8)
    m.probe = Probe()
    train_classifier(m, _tiny_task(40), None, epochs=2, batch_size=20, log=lambda *_: None)
    steps = [c for c in calls if c != "loss"]
    assert len(steps) == 4 and steps[-1] == (1.0, 4) and calls.count("loss") == 4


# --------------------------------------------------------------------------- CLI round trip
def _tiny_dataset(root):
    words = [f"good{i}" for i in range(8)] + [f"bad{i}" for i in range(8)]
    g = np.random.default_rng(0)

    def rows(n):
        out = []
        for _ in range(n):
            y = int(g.integers(0, 2))
            pool = words[:8] if y else words[8:]
            out.append((y, " ".join(g.choice(pool, 4)) + " the"))
        return out

    _write(root / "ds", "tiny.train", rows(80))
    _write(root / "ds", "tiny.dev", rows(20))
    _write(root / "ds", "tiny.test", rows(20))
    vec = g.normal(size=(len(words) + 1, 6)).astype(np.float32)
    np.save(root / "vec.npy", vec)
    (root / "vec.vocab.txt").write_text("\n".join(words + ["the"]) + "\n")
    return root / "ds", root / "vec.npy"


def test_cli_train_compress_eval_round_trip(tmp_path, capsys):
    from lmshrink.cli import main

    ds, vec = _tiny_dataset(tmp_path)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    assert main(["classify", "train", str(ds), "--model", "dan", "--out", str(m1), "--vectors", str(vec),
                 "--epochs", "2", "--seed", "1", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0 <= trained["accuracy"] <= 1
    assert main(["classify", "eval", str(m1), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(trained["test_accuracy"])
    assert ev["bytes_on_disk"] == sum(p.stat().st_size for p in m1.iterdir())
    assert main(["classify", "compress", str(m1), "--keep", "0.5", "--retrain-epochs", "1", "--out", str(m2), "--json"]) == 0
    comp = json.loads(capsys.readouterr().out)
    V = ev["embedding_params"] // 6
    assert comp["compression"]["rank"] == int(0.5 * V * 6 / (V + 6))
    assert main(["classify", "eval", str(m2), "--json"]) == 0
    ev2 = json.loads(capsys.readouterr().out)
    assert ev2["accuracy"] == pytest.approx(comp["test_accuracy"])
    assert ev2["embedding_params"] == comp["compression"]["rank"] * (V + 6) < ev["embedding_params"]
    assert ev2["compressed_layers"]["encoder"]["type"] == "low_rank_embedding"
    model, _ = lmshrink.load_model_dir(m2)
    assert isinstance(model.encoder, LowRankEmbedding)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lmshrink.cli import main

    ds, vec = _tiny_dataset(tmp_path)
    (ds / "tiny.test").write_text("0 fine\nnolabel\n")
    assert main(["classify", "train", str(ds), "--out", str(tmp_path / "m"), "--vectors", str(vec)]) == 2
    err = capsys.readouterr().err
    assert "tiny.test:2:" in err and err.count("\n") == 1
    assert main(["classify", "eval", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_online_low_rank_works_on_language_models_too():
    from lmshrink.models import LSTMLanguageModel

    lm = LSTMLanguageModel(500, hidden=16, layers=1)
    row = compress_embedding(lm, 0.2)
    assert row["rank"] == int(0.2 * 500 * 16 / 516) and isinstance(lm.encoder, LowRankEmbedding)
    logits, _ = lm(torch.randint(0, 500, (5, 2)))
    assert logits.shape == (5, 2, 500)


# --------------------------------------------------------------------------- benchmark results schema
ROW_KEYS = {"set", "seed", "model", "variant", "test_accuracy"}


def _check_schema(result: dict) -> None:
    for k in ("benchmark", "command", "config", "versions", "wall_s", "rows", "summary", "targets"):
        assert k in result, k
    for r in result["rows"]:
        assert ROW_KEYS <= set(r) or "skipped" in r
        if "skipped" not in r:
            assert 0 <= r["test_accuracy"] <= 1 and r["bytes_on_disk"] > 0
    for e in result["summary"]:
        assert {"set", "model", "variant", "config", "seeds", "accuracy_mean", "accuracy_std"} <= set(e)
    for ts in result["targets"].values():
        for t in ts.values():
            assert isinstance(t["met"], bool)


def test_results_schema_from_synthetic_rows(bench_module):
    mod = bench_module("textcls")
    rows = []
    for seed, (d, on, ft) in enumerate([(0.90, 0.89, 0.85), (0.92, 0.90, 0.86)]):
        common = {"set": "toy", "seed": seed, "model": "dan", "embedding_bytes": 100.0, "model_bytes": 200.0}
        rows += [{**common, "variant": "dense", "schedule": "calr", "test_accuracy": d, "bytes_on_disk": 1000},
                 {**common, "variant": "dense", "schedule": "constant", "test_accuracy": d - 0.01, "bytes_on_disk": 1000},
                 {**common, "variant": "online_low_rank", "keep": 0.1, "rank": 4, "test_accuracy": on, "bytes_on_disk": 400},
                 {**common, "variant": "quantize", "bits": 4, "test_accuracy": on, "bytes_on_disk": 500},
                 {**common, "model": "fasttext", "variant": "fasttext_zip", "test_accuracy": ft, "bytes_on_disk": 700}]
    summary = mod.summarize(rows)
    result = {"benchmark": "textcls", "command": "x", "config": {"models": ["dan"], "seeds": [0, 1], "epochs": 1,
              "retrain_epochs": 1, "adam_eps": 0.01, "lr": 0.01, "calr_decay": 0.5}, "versions": {}, "machine": "m",
              "wall_s": 1.0, "rows": rows, "summary": summary, "targets": mod.targets(summary)}
    _check_schema(result)
    t = result["targets"]["toy/dan"]
    assert t["online_keep0.1_within_0.5pt_of_dense"]["gap_points"] == pytest.approx(1.5)
    assert "paired_gap_points" not in t["online_keep0.1_within_0.5pt_of_dense"]  # summary only: no pairing
    paired = mod.targets(summary, rows)["toy/dan"]["online_keep0.1_within_0.5pt_of_dense"]["paired_gap_points"]
    # per seed: 90 - 89 = 1 and 92 - 90 = 2 points -> mean 1.5, standard error stdev(1, 2) / sqrt(2) = 0.5
    assert paired["seeds"] == 2 and paired["mean"] == pytest.approx(1.5) and paired["se"] == pytest.approx(0.5)
    assert t["online_keep0.1_within_0.5pt_of_dense"]["met"] is False
    assert t["plus_3pt_over_fasttext_zip_at_le_bytes"]["met"] is True  # 89.5 vs 85.5 at 400 <= 700 bytes
    assert t["calr_at_least_best_other_schedule"]["met"] is True
    dense = next(e for e in summary if e["variant"] == "dense" and e["config"] == "schedule=calr")
    assert dense["accuracy_mean"] == pytest.approx(0.91) and dense["accuracy_std"] == pytest.approx(0.01414, rel=1e-3)
    assert "| dan | online_low_rank | keep=0.1 (rank 4) | 89.50 ± 0.71 |" in mod.markdown(result)


def test_a_missing_fasttext_is_said_before_the_run(bench_module, monkeypatch, capsys):
    import importlib.util

    mod = bench_module("textcls")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fasttext" else real(name, *a))
    assert mod.warn_if_no_fasttext() is True
    assert "fasttext package is not installed (pip install -e .[bench])" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert mod.warn_if_no_fasttext() is False and capsys.readouterr().err == ""


def test_committed_results_follow_the_schema():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "textcls.json"
    files = sorted(path.parent.glob("textcls*.json"))  # textcls.json and its variants (e.g. tuned rates)
    if not files:
        pytest.skip("benchmarks/results/textcls.json not generated yet")
    for f in files:
        _check_schema(json.loads(f.read_text()))


def test_utf8_bom_is_not_part_of_the_label(tmp_path):
    f = tmp_path / "b.train"
    f.write_bytes("\ufeff1 first\n0 second\n".encode("utf-8"))
    ex, rep = read_textcls_file(f)
    assert [e.label for e in ex] == [1, 0] and rep.encoding == "utf-8"


def test_tuned_rates_come_per_set_and_schedule_from_a_schedules_result(tmp_path, bench_module):
    mod = bench_module("textcls")
    sched = {"settings": {"model": "dan"},
             "selected": {"trec": {"calr": {"lr": 0.1}, "constant": {"lr": 0.03}, "_target_calr_at_least_best_other": None},
                          "mr": {"calr": {"lr": 0.3}, "constant": {"lr": 0.01}}}}
    f = tmp_path / "schedules.json"
    f.write_text(json.dumps(sched))
    assert mod.load_tuned_lrs(str(f), ["trec"]) == {"model": "dan", "lrs": {"trec": {"calr": 0.1, "constant": 0.03}},
                                                    "calr_decays": None}
    # a result where CALR's decay was chosen on dev too: each set's decay comes along
    sched["selected"]["trec"]["calr"].update(decay=0.7, decays_tried=[0.5, 0.7])
    f.write_text(json.dumps(sched))
    assert mod.load_tuned_lrs(str(f), ["trec", "mr"])["calr_decays"] == {"trec": 0.7}
    with pytest.raises(SystemExit, match="no rates for sst2"):
        mod.load_tuned_lrs(str(f), ["trec", "sst2"])
    (tmp_path / "bad.json").write_text("{\"rows\": []}")
    with pytest.raises(SystemExit, match="not a schedules.py result"):
        mod.load_tuned_lrs(str(tmp_path / "bad.json"), ["trec"])
