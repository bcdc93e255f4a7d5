"""Data pipeline: default corpus, recipes and their errors, tokenizers, packing, and the deterministic loader."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data import (ByteTokenizer, TokenLoader, build_tokenizer, load_corpus, load_tokenizer, pack_corpus,
                            token_dtype)
from workbench.data.stories import generate_stories
from workbench.errors import WorkbenchError


# ---- corpus ---------------------------------------------------------------------------------------------------
def test_default_corpus_is_deterministic_and_sized():
    a, b = generate_stories(50), generate_stories(50)
    assert a == b
    assert generate_stories(50, seed=1) != a
    corpus = load_corpus("default")
    assert 1_000_000 < corpus.num_chars < 10_000_000  # a few MB, under the ~10 MB limit
    assert corpus.sha256 == load_corpus(None).sha256


def test_text_jsonl_and_folder_recipes(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('{"text": "third"}\n"fourth"\n\n')
    (tmp_path / "ignored.bin").write_bytes(b"\xff\xfe")
    assert load_corpus(tmp_path / "a.txt").documents == ["first doc\nline two", "second doc"]
    assert load_corpus(tmp_path / "b.jsonl").documents == ["third", "fourth"]
    folder = load_corpus(tmp_path)
    assert folder.documents == ["first doc\nline two", "second doc", "third", "fourth"]
    assert folder.sha256 != load_corpus(tmp_path / "a.txt").sha256


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"caf\xe9 latin-1", "not UTF-8"),
    # a compressed corpus was told to run iconv
    (gzip.compress(b'{"text": "hello"}\n'), r"is gzip-compressed, not text; unpack it first"),
])
def test_bad_data_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WorkbenchError, match=message):
        load_corpus(path)


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    with pytest.raises(WorkbenchError, match=r"d.jsonl:2"):
        load_corpus(path)


def test_byte_order_mark_is_dropped_in_text_and_jsonl(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.txt").write_bytes(bom + "Once upon a time.\n\nThe end.".encode())
    (tmp_path / "b.jsonl").write_bytes(bom + b'{"text": "first"}\r\n{"text": "second"}\r\n')
    assert load_corpus(tmp_path / "a.txt").documents == ["Once upon a time.", "The end."]
    assert load_corpus(tmp_path / "b.jsonl").documents == ["first", "second"]


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    texts = ["one\u2028two", "three\x85four", "five\u2029six"]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n",
                                      encoding="utf-8")
    assert load_corpus(tmp_path / "d.jsonl").documents == texts


def test_json_array_file(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a story"}, "another story"]))
    assert load_corpus(tmp_path / "d.json").documents == ["a story", "another story"]
    (tmp_path / "bad.json").write_text(json.dumps([{"body": "no text"}]))
    with pytest.raises(WorkbenchError, match="item 0"):
        load_corpus(tmp_path / "bad.json")


def test_folder_skips_hidden_paths_and_empty_files(tmp_path):
    (tmp_path / "a.txt").write_text("kept")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / ".notes.txt").write_text("a dotfile")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "description.txt").write_text("git's own file")
    (tmp_path / "sub" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "sub" / ".ipynb_checkpoints" / "b-checkpoint.txt").write_text("an editor copy")
    (tmp_path / "sub" / "b.txt").write_text("also kept")
    assert load_corpus(tmp_path).documents == ["kept", "also kept"]


def test_corpus_hash_tells_apart_documents_that_differ_only_in_where_they_split(tmp_path):
    """["hello\\x00world"] and ["hello", "world"] hashed alike, and the second reused the first one's pack."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "hello\x00world"}) + "\n")
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps({"text": "hello"}) + "\n" + json.dumps({"text": "world"}) + "\n")
    first, second = load_corpus(one), load_corpus(two)
    assert first.sha256 != second.sha256
    tok = ByteTokenizer()
    pack_corpus(first, tok, val_fraction=0.1, cache_dir=tmp_path / "cache")
    packed = pack_corpus(second, tok, val_fraction=0.1, cache_dir=tmp_path / "cache")
    stream = np.concatenate([packed.train, packed.val]).tolist()
    assert stream == tok.encode("hello") + [tok.eos_id] + tok.encode("world") + [tok.eos_id]


@pytest.mark.parametrize("separator", ["\n   \n", "\n\t\n", "\r\n \r\n", "\r\r", "\n\n\n"])
def test_blank_lines_with_spaces_tabs_or_old_mac_line_ends_separate_documents(tmp_path, separator):
    path = tmp_path / "stories.txt"
    path.write_bytes(f"first story.{separator}second story.\n".encode())
    assert load_corpus(path).documents == ["first story.", "second story."]


def test_folder_reads_json_arrays_follows_linked_folders_and_skips_metadata_json(tmp_path):
    import warnings

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    (data / "a.json").write_text(json.dumps(["from a json array"]))
    (data / "dataset_info.json").write_text(json.dumps({"description": "metadata, not documents"}))
    (data / "scores.json").write_text(json.dumps([1, 2, 3]))  # an array of non-documents: skipped too
    (elsewhere / "linked.txt").write_text("from a linked folder")
    (data / "linkdir").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(data, target_is_directory=True)  # a link loop must end
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = load_corpus(data).documents
    assert docs == ["from a json array", "from a linked folder"]
    assert any("dataset_info.json" in str(w.message) and "skipped" in str(w.message) for w in caught)
    assert any("scores.json" in str(w.message) and "skipped" in str(w.message) for w in caught)


def test_packing_memory_stays_at_one_piece_of_the_corpus(tmp_path):
    """Packing held every token as int64 three times over (~17x the text in RAM): a 1 GB corpus needed ~17 GB."""
    import tracemalloc

    from workbench.data.corpus import Corpus

    docs = [f"story {i}: " + "the cat sat on the mat. " * 8 for i in range(20_000)]  # 4.1 MB of text
    corpus = Corpus(docs, "memory test", "0" * 64)
    tracemalloc.start()
    try:
        packed = pack_corpus(corpus, ByteTokenizer(), cache_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text_bytes = sum(len(d) for d in docs)
    assert len(packed.train) + len(packed.val) == text_bytes + len(docs)
    assert peak < text_bytes / 2, f"packing peaked at {peak / 1e6:.1f} MB for {text_bytes / 1e6:.1f} MB of text"
    assert packed.train[: len(docs[0]) + 1].tolist() == ByteTokenizer().encode(docs[0]) + [256]


def test_hf_source_without_datasets_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(WorkbenchError, match="optional `datasets` package"):
        load_corpus("hf:roneneldan/TinyStories")
    with pytest.raises(WorkbenchError, match="needs a dataset name"):
        load_corpus("hf:")


def test_hf_source_says_install_datasets_when_only_a_datasets_folder_is_on_the_path(tmp_path, monkeypatch):
    """Run from the repository root without HF `datasets` installed, this repository's datasets/ folder imports as an
    empty namespace package; the error said "module 'datasets' has no attribute 'load_dataset'; are you online?"."""
    import sys

    (tmp_path / "datasets").mkdir()  # like this repository's datasets/ folder: no __init__.py
    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    try:
        import datasets
    except ImportError:
        pass
    else:
        if hasattr(datasets, "load_dataset"):
            pytest.skip("Hugging Face datasets is installed here")
    with pytest.raises(WorkbenchError, match="optional `datasets` package"):
        load_corpus("hf:roneneldan/TinyStories")
    monkeypatch.delitem(sys.modules, "datasets", raising=False)


def _fake_hf_datasets(monkeypatch, calls: list, fail: bool = False):
    """Stand in for HF `datasets` (not installed here, and tests never download): records each load_dataset call
    with the offline settings it saw, and fails like a missing cached copy when ``fail``."""
    import os
    import types

    from workbench.data import corpus

    class FakeDataset:
        column_names = ["text"]

        def __getitem__(self, column):
            return ["one story", "another story"]

    config = types.SimpleNamespace(HF_HUB_OFFLINE=False, HF_DATASETS_OFFLINE=False)

    def load_dataset(name, split):
        calls.append((name, split, os.environ.get("HF_DATASETS_OFFLINE"), config.HF_HUB_OFFLINE))
        if fail:
            raise ConnectionError("Couldn't reach the Hub and no cached copy")
        return FakeDataset()

    fake = types.SimpleNamespace(load_dataset=load_dataset, config=config)
    monkeypatch.setattr(corpus, "_import_hf_datasets", lambda: fake)
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return corpus, config


def test_hf_source_offline_reads_the_cache_at_once_or_fails_fast(monkeypatch):
    """Offline, load_dataset retried for ~25 s before falling back to the cached copy; a short connect probe now
    sends it straight to HF's offline mode, and without a cached copy the error comes at once."""
    import os
    import socket

    calls: list = []
    corpus, config = _fake_hf_datasets(monkeypatch, calls)
    probed = []

    def no_network(address, timeout=None):
        probed.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    assert load_corpus("hf:roneneldan/TinyStories:validation").documents == ["one story", "another story"]
    assert probed == [(("hub.example.org", 8443), corpus.HUB_PROBE_TIMEOUT_S)]
    assert calls == [("roneneldan/TinyStories", "validation", "1", True)]  # offline mode during the call...
    assert os.environ.get("HF_DATASETS_OFFLINE") is None and config.HF_HUB_OFFLINE is False  # ...and only then

    corpus, _ = _fake_hf_datasets(monkeypatch, calls, fail=True)
    with pytest.raises(WorkbenchError, match=r"hub\.example\.org:8443 is unreachable \(Network is unreachable\), "
                                             r"and your Hugging Face cache has no copy"):
        load_corpus("hf:roneneldan/TinyStories")

    calls.clear()
    corpus, _ = _fake_hf_datasets(monkeypatch, calls)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the user chose offline mode: no probe
    load_corpus("hf:some/set")
    assert len(probed) == 2 and calls == [("some/set", "train", "1", False)]


def test_hf_source_behind_a_proxy_is_not_probed(monkeypatch):
    import socket

    calls: list = []
    _fake_hf_datasets(monkeypatch, calls)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed despite the proxy"))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert load_corpus("hf:some/set").documents == ["one story", "another story"]
    assert calls == [("some/set", "train", None, False)]


# ---- tokenizers -----------------------------------------------------------------------------------------------
def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Hello, wörld — 你好!"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    packed = tok.encode_documents(["ab", "c"])
    assert packed.tolist() == [97, 98, 256, 99, 256]
    assert tok.decode(packed.tolist()) == "ab<|endoftext|>c<|endoftext|>"


def test_bpe_is_trained_locally_saved_and_reloaded(tmp_path):
    docs = generate_stories(300)
    tok = build_tokenizer("bpe", docs, vocab_size=400)
    assert 300 <= tok.vocab_size <= 400
    ids = tok.encode(docs[0])
    assert len(ids) < len(docs[0].encode()) / 1.5  # merges compress the text
    assert tok.decode(ids) == docs[0]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.identity == tok.identity and again.encode(docs[1]) == tok.encode(docs[1])
    assert build_tokenizer("bpe", docs, vocab_size=400).identity == tok.identity  # training is deterministic
    ByteTokenizer().save(tmp_path / "b")
    assert isinstance(load_tokenizer(tmp_path / "b"), ByteTokenizer)
    with pytest.raises(WorkbenchError, match="unknown tokenizer"):
        build_tokenizer("wordpiece")


# ---- packing --------------------------------------------------------------------------------------------------
def test_bpe_encodes_a_literal_end_of_text_marker_in_text_as_text():
    """A document spelling "<|endoftext|>" got a real end-of-text token (a document boundary) inside it under BPE."""
    docs = ["a story about the <|endoftext|> marker and more words"] * 30 + ["plain words here"] * 30
    for tok in (build_tokenizer("bpe", docs, vocab_size=300), ByteTokenizer()):
        stream = tok.encode_documents(docs[:1]).tolist()
        assert stream.count(tok.eos_id) == 1 and stream[-1] == tok.eos_id, tok.kind
        assert tok.decode(stream[:-1]) == docs[0]


def test_pack_is_deterministic_cached_and_split(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(generate_stories(40)))
    corpus = load_corpus(tmp_path / "c.txt")
    tok = ByteTokenizer()
    packed = pack_corpus(corpus, tok, val_fraction=0.1, cache_dir=tmp_path / "cache")
    assert packed.train.dtype == np.uint16
    total = len(packed.train) + len(packed.val)
    assert total == len(tok.encode_documents(corpus.documents))
    assert abs(len(packed.val) - 0.1 * total) <= 1
    again = pack_corpus(corpus, tok, val_fraction=0.1, cache_dir=tmp_path / "cache")
    assert again.directory == packed.directory and np.array_equal(again.train, packed.train)
    other = pack_corpus(corpus, tok, val_fraction=0.2, cache_dir=tmp_path / "cache")
    assert other.directory != packed.directory
    meta = json.loads((packed.directory / "meta.json").read_text())
    assert meta["tokenizer"] == tok.identity and meta["corpus_sha256"] == corpus.sha256


def test_token_dtype_by_vocab():
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(154880) == np.uint32


# ---- loader ---------------------------------------------------------------------------------------------------
def test_loader_is_deterministic_shifted_and_sharded():
    tokens = np.arange(10_000, dtype=np.uint16)
    loader = TokenLoader(tokens, batch_size=4, seq_len=16, seed=7)
    x, y = loader.batch(step=3)
    assert x.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])  # y[t] = x[t+1]
    assert torch.equal(x, TokenLoader(tokens, 4, 16, seed=7).batch(3)[0])  # same (seed, step) -> same batch
    assert not torch.equal(x, loader.batch(4)[0]) and not torch.equal(x, loader.batch(3, micro_step=1)[0])
    # data-parallel: two ranks split the same global batch a single rank with twice the batch would see
    whole = TokenLoader(tokens, 8, 16, seed=7).batch(5)[0]
    r0 = TokenLoader(tokens, 4, 16, seed=7, rank=0, world_size=2).batch(5)[0]
    r1 = TokenLoader(tokens, 4, 16, seed=7, rank=1, world_size=2).batch(5)[0]
    assert torch.equal(torch.cat([r0, r1]).sort(0).values, whole.sort(0).values)
    assert torch.equal(r0, whole[0::2])


def test_loader_rejects_a_split_shorter_than_a_sequence():
    with pytest.raises(WorkbenchError, match="seq-len"):
        TokenLoader(np.arange(16, dtype=np.uint16), batch_size=2, seq_len=16, name="val")


def test_loader_windows_reach_the_last_token():
    """A window is seq_len + 1 tokens; every start from 0 to len - seq_len - 1 is drawn (the last token of a split
    used to be unreachable as a target, and a split needed seq_len + 2 tokens)."""
    x, y = TokenLoader(np.arange(17, dtype=np.uint16), batch_size=4, seq_len=16).batch(0)
    assert torch.equal(x[0], torch.arange(16)) and torch.equal(y[0], torch.arange(1, 17))
    loader = TokenLoader(np.arange(40, dtype=np.uint16), batch_size=64, seq_len=16)
    starts = {int(o) for step in range(20) for o in loader.offsets(step)}
    assert starts == set(range(40 - 16))


@pytest.mark.parametrize("damage", ["truncated train.bin", "broken meta.json"])
def test_a_damaged_pack_in_the_cache_is_packed_again(tmp_path, damage):
    """A damaged cached pack failed every later run on that corpus ('mmap length is greater than file size', or a
    JSON error), naming no folder, until the user found and deleted it."""
    corpus = load_corpus("default")
    first = pack_corpus(corpus, ByteTokenizer(), cache_dir=tmp_path)
    expected = np.array(first.train[:1000]), len(first.train)
    folder = first.directory
    del first
    if damage == "truncated train.bin":
        os.truncate(folder / "train.bin", 10)
    else:
        (folder / "meta.json").write_text('{"version": 2,\n', encoding="utf-8")
    with pytest.warns(UserWarning, match=f"packed-token cache {folder} is damaged"):
        again = pack_corpus(corpus, ByteTokenizer(), cache_dir=tmp_path)
    assert len(again.train) == expected[1] and np.array_equal(np.array(again.train[:1000]), expected[0])
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # the damaged copy is gone


def test_generate_default_corpus_script_checks_its_arguments_first(tmp_path, capsys, monkeypatch):
    """--stories 0 and a path in a missing folder ended in tracebacks, the latter after generating every story."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generate_default_corpus", Path(__file__).resolve().parents[1] / "datasets" / "generate_default_corpus.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "x.txt"), "--stories", "0"])
    assert exit_info.value.code == 2 and "--stories must be >= 1" in capsys.readouterr().err
    import workbench.data.stories as stories_module

    generated = []
    monkeypatch.setattr(script, "generate_stories", lambda n: generated.append(n) or ["a"] * n)
    with pytest.raises(SystemExit):  # an unwritable file is found before any story is generated
        script.main(["/proc/no_such_file.txt", "--stories", "3"])
    assert "cannot write /proc/no_such_file.txt" in capsys.readouterr().err and generated == []
    monkeypatch.setattr(script, "generate_stories", stories_module.generate_stories)
    nested = tmp_path / "new" / "folder" / "stories.txt"
    assert script.main([str(nested), "--stories", "2"]) == 0
    assert nested.read_text(encoding="utf-8").count("\n\n") == 1  # two stories, one paragraph break
