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
