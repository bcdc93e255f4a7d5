"""Tokenizers: byte-level (the default: 256 bytes + an end-of-text token) and BPE trained locally (HF ``tokenizers``).

Both have the same small interface: ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``iter_encoded(docs, dtype)`` (the token stream of the documents, each followed by ``eos_id``, in pieces of bounded
size, so packing a large corpus never holds all its tokens in memory at once), ``encode_documents(docs)`` (the same
stream as one array), ``vocab_size``, ``eos_id``, ``save(dir)``, and ``identity`` (a string that changes whenever
the token ids would change; the packing cache keys on it). Text that spells the end-of-text marker
``<|endoftext|>`` is encoded as text by both: only the tokenizer inserts the end-of-text token, between documents.
A run saves its tokenizer in its run folder (``tokenizer.json``) and ``load_tokenizer(run_dir)`` reads it back on
resume.
Used by the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from workbench.errors import WorkbenchError

EOS = "<|endoftext|>"
ENCODE_BATCH_DOCS = 1024  # documents per piece of iter_encoded: bounds packing's memory, amortises the calls
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_KINDS = ("byte", "bpe")


def _batches(docs: list[str], size: int = ENCODE_BATCH_DOCS) -> Iterator[list[str]]:
    for start in range(0, len(docs), size):
        yield docs[start:start + size]


def _with_eos(pieces: list[np.ndarray], eos_id: int, dtype: np.dtype) -> np.ndarray:
    """The pieces (one per document) joined into one array of ``dtype``, each followed by ``eos_id``."""
    out = np.empty(sum(len(p) + 1 for p in pieces), dtype=dtype)
    at = 0
    for piece in pieces:
        out[at:at + len(piece)] = piece
        out[at + len(piece)] = eos_id
        at += len(piece) + 1
    return out


class ByteTokenizer:
    """UTF-8 bytes are the tokens 0..255; ``<|endoftext|>`` is 256. Needs no training and never fails to encode."""

    kind = "byte"

    def __init__(self) -> None:
        self.eos_id = 256
        self.vocab_size = 257

    @property
    def identity(self) -> str:
        return "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        out, chunk = [], bytearray()
        for i in ids:
            if i < 256:
                chunk.append(i)
            else:  # end-of-text (or anything out of range): flush and mark it
                out.append(chunk.decode("utf-8", errors="replace"))
                chunk = bytearray()
                out.append(EOS if i == self.eos_id else "")
        out.append(chunk.decode("utf-8", errors="replace"))
        return "".join(out)

    def iter_encoded(self, docs: list[str], dtype=np.int64) -> Iterator[np.ndarray]:
        for batch in _batches(docs):
            yield _with_eos([np.frombuffer(d.encode("utf-8"), dtype=np.uint8) for d in batch], self.eos_id, dtype)

    def encode_documents(self, docs: list[str], dtype=np.int64) -> np.ndarray:
        return _concatenate(self.iter_encoded(docs, dtype), dtype)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"workbench_tokenizer": "byte", "vocab_size": self.vocab_size}), encoding="utf-8")
        return path


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained with HF ``tokenizers`` on the run's corpus; saved as tokenizer.json."""

    kind = "bpe"

    def __init__(self, tok) -> None:  # tok: tokenizers.Tokenizer
        self._tok = tok
        self.eos_id = tok.token_to_id(EOS)
        if self.eos_id is None:
            raise WorkbenchError(f"BPE tokenizer has no {EOS!r} token; was it trained by workbench?")
        # A document or prompt that spells "<|endoftext|>" is text, as with the byte tokenizer: without this the
        # tokenizer would match the special token inside it and put a document boundary in the middle. (A runtime
        # switch, not saved in tokenizer.json, so it leaves ``identity`` unchanged.)
        tok.encode_special_tokens = True
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, docs: list[str], vocab_size: int = 2048) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 300:
            raise WorkbenchError(f"bpe vocab_size must be >= 300 (256 bytes + merges), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    @property
    def identity(self) -> str:
        return "bpe-" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def iter_encoded(self, docs: list[str], dtype=np.int64) -> Iterator[np.ndarray]:
        for batch in _batches(docs):
            yield _with_eos([np.asarray(enc.ids, dtype=dtype) for enc in self._tok.encode_batch(batch)], self.eos_id,
                            dtype)

    def encode_documents(self, docs: list[str], dtype=np.int64) -> np.ndarray:
        return _concatenate(self.iter_encoded(docs, dtype), dtype)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path


def _concatenate(pieces: Iterable[np.ndarray], dtype) -> np.ndarray:
    pieces = list(pieces)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


Tokenizer = ByteTokenizer | BPETokenizer


def build_tokenizer(kind: str, docs: list[str] | None = None, vocab_size: int = 2048) -> Tokenizer:
    """A fresh tokenizer of ``kind`` ("byte" or "bpe"; bpe is trained on ``docs``)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if not docs:
            raise WorkbenchError("training a BPE tokenizer needs the corpus documents")
        return BPETokenizer.train(docs, vocab_size)
    raise WorkbenchError(f"unknown tokenizer {kind!r}; choose one of {list(TOKENIZER_KINDS)}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Read the tokenizer a run saved in ``directory``."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.exists():
        raise WorkbenchError(f"no {TOKENIZER_FILE} in {str(directory)!r}")
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(head, dict) and head.get("workbench_tokenizer") == "byte":
            return ByteTokenizer()
        return BPETokenizer.from_file(path)
    except Exception as exc:  # truncated, not JSON, or JSON that HF tokenizers cannot read (its errors are bare)
        raise WorkbenchError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]}); it is the run's "
                             f"tokenizer, which --resume needs as it was") from None
