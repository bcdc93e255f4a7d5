"""Corpus recipes: where training text comes from, returned as a list of documents (strings).

Sources (the ``data`` setting of a run, the ``--data`` flag, the notebook's ``data`` parameter):
- ``"default"`` (or None): the bundled synthetic stories, generated deterministically (workbench/data/stories.py);
- a local UTF-8 text file (``.txt``, ``.md``, anything not ``.jsonl``/``.ndjson``/``.json``): documents split on
  blank lines (a line of only spaces or tabs is blank);
- a local JSONL file: one JSON object per line, text in the ``"text"`` field (or a plain JSON string per line);
- a local ``.json`` file: a JSON array of such strings/objects (or one object);
- a local folder: every ``*.txt``, ``*.md``, ``*.text``, ``*.jsonl``, ``*.ndjson`` and ``*.json`` file below it
  (symlinked folders followed), in sorted path order, skipping hidden paths (``.git/``, ``.ipynb_checkpoints/``,
  dotfiles) and empty files; a ``.json`` there that is not documents (metadata, scores) is skipped with a warning;
- ``"hf:NAME"`` or ``"hf:NAME:SPLIT"``: a Hugging Face ``datasets`` dataset (optional dependency, needs network the
  first time; never downloaded by tests). Offline (the Hub does not answer a 3 s connect), the copy in the HF cache
  is read in HF's offline mode at once, instead of after half a minute of retries; with no copy, a clear error.
A UTF-8 byte-order mark at the start of a file is dropped.
Bad input (missing path, empty or non-UTF-8 file, no text found) raises ``WorkbenchError`` with a clear message.
Used by the trainer, ``make demo`` and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.params import env_flag

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class Corpus:
    """Documents plus where they came from and a content hash (the packing cache key)."""

    documents: list[str]
    source: str
    sha256: str

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def check_data_source(data: str | Path | None) -> str:
    """The cheap checks of a data setting, without reading it (a notebook's parameter cell calls this): a local path
    must exist and an ``hf:`` source must name a dataset. Returns the normalised spec."""
    spec = "default" if data is None or str(data).strip() == "" else str(data).strip()
    if spec == "default":
        return spec
    if spec.startswith("hf:"):
        if not spec[3:].partition(":")[0].strip():
            raise WorkbenchError("data 'hf:' needs a dataset name, e.g. 'hf:roneneldan/TinyStories' or "
                                 "'hf:roneneldan/TinyStories:validation'")
        return spec
    if not Path(spec).expanduser().exists():
        raise WorkbenchError(f"data path {spec!r} does not exist; pass a UTF-8 text/JSONL file, a folder, "
                             f"'default', or 'hf:NAME'")
    return spec


def load_corpus(data: str | Path | None = "default", text_field: str = "text") -> Corpus:
    """Load documents from ``data`` (see the module docstring for what it may be)."""
    spec = check_data_source(data)
    if spec == "default":
        from workbench.data.stories import VERSION, generate_stories

        docs, source = generate_stories(), f"default ({VERSION}, generated)"
    elif spec.startswith("hf:"):
        docs, source = _load_hf(spec[3:], text_field), spec
    else:
        path = Path(spec).expanduser()
        docs = _load_folder(path, text_field) if path.is_dir() else _load_file(path, text_field)
        source = str(path.resolve())
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise WorkbenchError(f"data {spec!r} holds no text; give a non-empty UTF-8 text or JSONL file")
    return Corpus(docs, source, _hash_documents(docs))


CORPUS_HASH = "sha256-length-prefixed"  # how Corpus.sha256 is computed; saved with packs and checkpoints


def _hash_documents(docs: list[str]) -> str:
    """sha256 over each document's UTF-8 bytes, each preceded by its length. The length prefix keeps the encoding
    unambiguous: with a separator byte instead, ["a\x00b"] and ["a", "b"] hashed alike (JSON strings may hold NUL),
    and the second corpus reused the first one's packed tokens."""
    h = hashlib.sha256()
    for d in docs:
        data = d.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def pre_v2_hash(docs: list[str], tokenizer_kind: str) -> str | None:
    """The corpus hash an earlier workbench (before ``CORPUS_HASH``) saved in its checkpoints: sha256 over the
    documents, each followed by a NUL byte. None when that version would have packed these documents into other
    tokens (a NUL inside a document, or, with BPE, a literal end-of-text marker it split out as the special
    token), so such a checkpoint cannot continue; otherwise an old checkpoint of the same data resumes."""
    from workbench.data.tokenizer import EOS

    if any("\x00" in d for d in docs) or (tokenizer_kind == "bpe" and any(EOS in d for d in docs)):
        return None
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


# (magic bytes, name, command) of compressed files a data folder may hold
_ARCHIVES = ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"), (b"\xfd7zXZ\x00", "xz", "unxz"),
             (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"), (b"PK\x03\x04", "zip", "unzip"))


def _read_utf8(path: Path, allow_empty: bool = False) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        if allow_empty:
            return ""
        raise WorkbenchError(f"data file {str(path)!r} is empty; give a file with some UTF-8 text")
    try:
        return raw.decode("utf-8-sig")  # "-sig": a leading byte-order mark (Windows editors write one) is dropped
    except UnicodeDecodeError as exc:
        for magic, kind, unpack in _ARCHIVES:  # iconv cannot help a compressed file
            if raw.startswith(magic):
                raise WorkbenchError(f"data file {str(path)!r} is {kind}-compressed, not text; unpack it first, "
                                     f"e.g. `{unpack} {path}`") from None
        raise WorkbenchError(f"data file {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start}); "
                             f"convert it, e.g. `iconv -t UTF-8`") from None


def _load_file(path: Path, text_field: str, allow_empty: bool = False) -> list[str]:
    text = _read_utf8(path, allow_empty)
    if not text:
        return []
    if path.suffix.lower() in JSONL_SUFFIXES:
        return _parse_jsonl(text, path, text_field)
    if path.suffix.lower() == ".json":
        return _parse_json(text, path, text_field)
    # Plain text: documents are paragraphs separated by blank lines (a single-paragraph file is one document). A
    # line of only spaces or tabs is blank too, and old Mac "\r" line ends count as line ends.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [p.strip() for p in _BLANK_LINE.split(text) if p.strip()]


_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")  # a line holding nothing but whitespace other than newlines


def _document(item, where: str, text_field: str) -> str:
    """The text of one JSON record: a string, or an object's string ``text_field``."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get(text_field), str):
        return item[text_field]
    raise WorkbenchError(f"{where}: expected a JSON string or an object with a string {text_field!r} field")


def _parse_jsonl(text: str, path: Path, text_field: str) -> list[str]:
    docs = []
    # split on "\n" only: str.splitlines() also splits on U+2028, U+0085, ..., which JSON allows inside strings
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path}:{number}: not valid JSON ({exc.msg}); JSONL needs one object per line") \
                from None
        docs.append(_document(item, f"{path}:{number}", text_field))
    return docs


def _parse_json(text: str, path: Path, text_field: str) -> list[str]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); a .json corpus is an array "
                             f"of strings or of objects with a {text_field!r} field") from None
    if not isinstance(items, list):
        items = [items]
    return [_document(item, f"{path}: item {i}", text_field) for i, item in enumerate(items)]


def _is_hidden(file: Path, root: Path) -> bool:
    """A dotfile or anything inside a dot-folder below ``root`` (.git, .ipynb_checkpoints, editor backups)."""
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _files_below(root: Path) -> list[Path]:
    """Every file below ``root``, following symlinked folders (each real folder once: a link loop ends)."""
    seen, files = set(), []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()  # listing order decides which path of a twice-reachable folder is kept: make it fixed
        files.extend(Path(folder) / name for name in names)
    return files


def _folder_json_documents(path: Path, text_field: str) -> list[str]:
    """The documents of a ``.json`` file met in a folder. A file given directly must be documents; in a folder a
    .json that is not (dataset_info.json, scores.json: an object without ``text_field``, an array of numbers) sits
    next to the data, so it is skipped with a warning instead of failing the whole folder."""
    text = _read_utf8(path, allow_empty=True)
    if not text:
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return _parse_json(text, path, text_field)  # reports it with the file name
    items = items if isinstance(items, list) else [items]
    try:
        return [_document(item, f"{path}: item {i}", text_field) for i, item in enumerate(items)]
    except WorkbenchError:
        warnings.warn(f"{path}: not documents (strings or objects with a string {text_field!r} field); skipped")
        return []


def _load_folder(path: Path, text_field: str) -> list[str]:
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES + (".json",)
    files = sorted(p for p in _files_below(path)
                   if p.is_file() and p.suffix.lower() in suffixes and not _is_hidden(p, path))
    if not files:
        raise WorkbenchError(f"folder {str(path)!r} holds no {', '.join(suffixes)} files (hidden ones are skipped)")
    docs: list[str] = []
    for f in files:  # an empty file in a folder holds no documents; it is not an error there
        if f.suffix.lower() == ".json":
            docs.extend(_folder_json_documents(f, text_field))
        else:
            docs.extend(_load_file(f, text_field, allow_empty=True))
    return docs


def _import_hf_datasets():
    """Hugging Face's ``datasets`` package, or None if it is not installed.

    This repository has a top-level ``datasets/`` folder (the bundled corpus notes). Where the real package is not
    installed, Python run from the repository root (``python -m workbench ...``) imports that folder as an empty
    namespace package named ``datasets`` (an installed package would win over it), so "installed" means "has
    ``load_dataset``"."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets if hasattr(datasets, "load_dataset") else None


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached, or None if it can (or we cannot tell).

    Offline, ``load_dataset`` retries its HTTP requests for ~25 s before failing; one TCP connect with a short timeout
    tells the same in 3 s. Skipped when the user chose offline mode (the cache is used, no network needed) or set a
    proxy (a direct connect would fail where the proxied request works)."""
    if env_flag("HF_DATASETS_OFFLINE") or env_flag("HF_HUB_OFFLINE"):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host}:{port} is unreachable ({error.strerror or type(error).__name__})"
    return None


@contextlib.contextmanager
def _hub_offline(datasets):
    """HF's offline mode for one call. ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE when they are imported, so besides the environment their module-level copies are set too,
    and everything is restored afterwards."""
    targets = [(module, attr) for module in (getattr(datasets, "config", None),
                                             _optional_module("huggingface_hub.constants"))
               if module is not None for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(module, attr)]
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved_attrs = [(module, attr, getattr(module, attr)) for module, attr in targets]
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for module, attr in targets:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in saved_attrs:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _optional_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _load_hf(spec: str, text_field: str) -> list[str]:
    name, _, split = spec.partition(":")
    datasets = _import_hf_datasets()  # optional: pip install -e '.[hf-datasets]'
    if datasets is None:
        raise WorkbenchError("data 'hf:...' needs the optional `datasets` package: pip install -e '.[hf-datasets]'")
    unreachable = _hub_unreachable()
    try:
        # Offline, read the copy in the HF cache without asking the Hub (asking retried for ~25 s before falling
        # back to that same copy); with no copy there, the error below comes at once.
        with _hub_offline(datasets) if unreachable else contextlib.nullcontext():
            ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # offline without a cached copy, unknown name, gated dataset, ...
        if unreachable:
            raise WorkbenchError(f"could not load Hugging Face dataset {name!r}: {unreachable}, and your Hugging "
                                 f"Face cache has no copy of it; go online once, or use a local file / "
                                 f"'default'") from None
        raise WorkbenchError(f"could not load Hugging Face dataset {name!r} ({type(exc).__name__}: {exc}); "
                             f"are you online? Or use a local file / 'default'") from None
    if text_field not in ds.column_names:
        raise WorkbenchError(f"dataset {name!r} has no {text_field!r} column; columns: {ds.column_names}")
    return [t for t in ds[text_field] if isinstance(t, str)]
