"""`workbench models`: the preset table and its JSON."""

import json

from workbench.cli import main
from workbench.model import list_presets
from workbench.model.accounting import count_parameters
from workbench.model.presets import get_preset


def test_models_json(capsys):
    assert main(["models", "--json", "--seq-len", "1024"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_presets()
    for r in rows:
        p = count_parameters(get_preset(r["name"]))
        assert r["total"] == p.total and r["active"] == p.active and r["seq_len"] == 1024
    assert {r["name"] for r in rows if r["full_size"]} == {"glm-4.5", "glm-4.5-air", "glm-5"}


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "glm-5" in out and "753.86B" in out and "39.88B" in out and "744.00B/40.00B" in out


def test_models_prints_no_flops_at_a_length_a_preset_cannot_take(capsys):
    """The default column was GFLOP/tok@4096 for the tiny presets too, which `workbench train` refuses beyond their
    2048 positions: numbers for runs that cannot happen. Those cells are '-' with a footnote saying why."""
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    short = [name for name in list_presets() if get_preset(name).max_position_embeddings < 4096]
    assert short  # the tiny presets
    for name in list_presets():
        last = lines[name].split()[-1]
        assert (last == "-") == (name in short), lines[name]
    assert "- = beyond the preset's max positions" in out and "glm4-tiny 2048" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in list_presets():
        assert rows[name]["max_seq_len"] == get_preset(name).max_position_embeddings
        assert (rows[name]["flops_per_token"] is None) == (name in short)
    assert main(["models", "--seq-len", "2048"]) == 0
    assert "beyond the preset's max positions" not in capsys.readouterr().out


def test_models_refuses_a_seq_len_no_preset_can_take(capsys):
    longest = max(get_preset(name).max_position_embeddings for name in list_presets())
    assert main(["models", "--seq-len", str(longest + 1)]) == 2
    err = capsys.readouterr().err
    assert f"--seq-len {longest + 1} is beyond every preset's positions (at most {longest}" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["models", "--seq-len", "0"]) == 2
    assert "seq_len must be >= 1 (got 0)" in capsys.readouterr().err


def test_models_says_which_vocabulary_it_counted(capsys):
    """The table counted glm4-tiny at its preset's 2048-token vocabulary (17.84M) without a word, while train and
    the README say 16.0M with the byte-level tokenizer."""
    from workbench.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "17.84M" in out and "byte-level: 257 tokens, so glm4-tiny trains 16.00M" in out

