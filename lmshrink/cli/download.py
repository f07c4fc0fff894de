from __future__ import annotations

HELP = "download a corpus from its canonical source, checking sha256"


def add_arguments(p) -> None:
    p.add_argument("corpus", help="ptb or wikitext-2")
    p.add_argument("--data", metavar="DIR", default=None, help="data directory (default: $LMSHRINK_DATA or cache)")
    p.add_argument("--url", default=None, help="mirror URL (default: the canonical source)")


def run(args) -> int:
    from ..data import default_data_dir, download_corpus

    folder = download_corpus(args.corpus, args.data or default_data_dir(), url=args.url)
    print(f"{args.corpus}: verified files in {folder}")
    return 0
