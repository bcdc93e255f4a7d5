"""Corpus -> packed token files: ``train.bin`` and ``val.bin`` (numpy memmaps, uint16 when the vocab fits, else uint32).

Documents are tokenized, joined with the end-of-text token, and the stream is split deterministically: the first
``1 - val_fraction`` of the tokens train, the rest validate. The files are cached under ``<cache>/packed/<key>/``
(``workbench.cache_dir``: ``$WORKBENCH_CACHE_DIR``, else ``~/.cache/workbench``), keyed by (corpus hash, tokenizer
identity, val fraction), and written atomically (temp folder + rename), so two runs never see half a file. Used by
the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.data.corpus import CORPUS_HASH, Corpus
from workbench.cache_dir import cache_dir
from workbench.errors import WorkbenchError

# v2: corpus hash with length prefixes, BPE encodes a literal "<|endoftext|>" in text as text (other ids than v1)
PACK_VERSION = "pack-v2"


@dataclass
class PackedData:
    """Memory-mapped train/val token arrays and their metadata."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    directory: Path


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (< 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def cache_root() -> Path:
    return cache_dir() / "packed"


def pack_key(corpus_sha256: str, tokenizer_identity: str, val_fraction: float) -> str:
    text = f"{PACK_VERSION}|{corpus_sha256}|{tokenizer_identity}|{val_fraction!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def pack_corpus(corpus: Corpus, tokenizer, val_fraction: float = 0.05, cache_dir: str | Path | None = None
                ) -> PackedData:
    """Tokenize and pack ``corpus`` (or reuse the cached pack) and return memmaps of the train/val tokens."""
    if not 0.0 < val_fraction < 0.5:
        raise WorkbenchError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    directory = root / pack_key(corpus.sha256, tokenizer.identity, val_fraction)
    if (directory / "meta.json").exists():
        try:
            return open_pack(directory)
        except WorkbenchError as exc:  # a damaged cache failed every later run on this corpus: pack it again
            warnings.warn(f"{exc}; packing the corpus again", stacklevel=2)
            aside = directory.with_name(f".{directory.name}.damaged-{os.getpid()}")
            os.replace(directory, aside)
            shutil.rmtree(aside, ignore_errors=True)
    _write_pack(directory, corpus, tokenizer, val_fraction)
    return open_pack(directory)


def open_pack(directory: str | Path) -> PackedData:
    """Memory-map a pack, after checking that its files are whole (a ``WorkbenchError`` naming the folder if not:
    "mmap length is greater than file size" named nothing)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        sizes = {name: int(meta[f"{name}_tokens"]) for name in ("train", "val")}
        for name, tokens in sizes.items():
            actual = (directory / f"{name}.bin").stat().st_size
            if actual != tokens * dtype.itemsize:
                raise ValueError(f"{name}.bin holds {actual} bytes, meta.json says {tokens * dtype.itemsize}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WorkbenchError(f"packed-token cache {directory} is damaged ({exc})") from None
    train = np.memmap(directory / "train.bin", dtype=dtype, mode="r", shape=(sizes["train"],))
    val = np.memmap(directory / "val.bin", dtype=dtype, mode="r", shape=(sizes["val"],))
    return PackedData(train, val, meta, directory)


def _write_pack(directory: Path, corpus: Corpus, tokenizer, val_fraction: float) -> None:
    """Tokenize into ``directory`` (atomically). The token stream goes to disk piece by piece, so memory stays at
    one piece however large the corpus; then its last ``val_fraction`` moves from train.bin into val.bin."""
    dtype = token_dtype(tokenizer.vocab_size)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    except OSError as exc:  # "[Errno 13] Permission denied: '/nonexistent'" did not say what it was for
        raise WorkbenchError(f"cannot write the packed-token cache in {directory.parent} ({exc.strerror or exc}); "
                             f"set WORKBENCH_CACHE_DIR to a writable folder") from exc
    try:
        total = 0
        with open(tmp / "train.bin", "wb") as f:
            for piece in tokenizer.iter_encoded(corpus.documents, dtype):
                f.write(memoryview(piece))
                total += len(piece)
        n_val = max(1, int(round(total * val_fraction)))
        n_train = total - n_val
        if n_train < 2:
            raise WorkbenchError(f"corpus {corpus.source!r} is too small to train on ({total} tokens)")
        with open(tmp / "train.bin", "r+b") as train, open(tmp / "val.bin", "wb") as val:
            train.seek(n_train * dtype.itemsize)
            shutil.copyfileobj(train, val, 1 << 20)  # in 1 MiB pieces: the tail may be up to half the stream
            train.truncate(n_train * dtype.itemsize)
            for f in (train, val):
                f.flush()
                os.fsync(f.fileno())
        meta = {
            "version": PACK_VERSION, "source": corpus.source, "corpus_sha256": corpus.sha256,
            "corpus_hash": CORPUS_HASH, "tokenizer": tokenizer.identity, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "dtype": dtype.name, "train_tokens": int(n_train), "val_tokens": int(n_val),
            "val_fraction": val_fraction, "documents": len(corpus.documents),
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:  # on disk before the rename publishes the pack
            f.write(json.dumps(meta, indent=1))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, directory)
        except OSError:  # another process packed the same corpus meanwhile: theirs is identical
            if not (directory / "meta.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
