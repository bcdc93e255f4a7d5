"""Executes every notebooks/*.ipynb headlessly with papermill at tiny sizes and asserts on its results JSON.

Each notebook has a case file ``tests/notebook_cases/<notebook stem>.py`` defining:
- ``PARAMETERS``: tiny values injected by papermill (``results_path`` and ``out_dir`` are added here);
- ``check(results: dict)``: assertions on the JSON the notebook's last cell writes;
- optionally ``TIMEOUT_S`` (per-cell timeout, default 600).
The structure checks fail when a notebook is stored with outputs, has no cell tagged ``parameters``, does not use
the ``python3`` kernel, or has no case file.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CASES = REPO / "tests" / "notebook_cases"


def _load_case(notebook: Path):
    path = CASES / f"{notebook.stem}.py"
    if not path.exists():
        pytest.fail(f"{notebook.name} has no test case file {path.relative_to(REPO)}")
    spec = importlib.util.spec_from_file_location(f"notebook_case_{notebook.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(notebook):
    nb = json.loads(notebook.read_text())
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    with_outputs = [i for i, c in enumerate(code_cells) if c.get("outputs") or c.get("execution_count")]
    assert not with_outputs, f"{notebook.name}: code cells {with_outputs} are stored with outputs; clear them"
    tagged = [c for c in code_cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: needs exactly one code cell tagged 'parameters' (has {len(tagged)})"
    assert code_cells.index(tagged[0]) == 0, f"{notebook.name}: the parameters cell must be the first code cell"
    source = "".join(tagged[0]["source"])
    for name in ("results_path", "out_dir"):
        assert name in source, f"{notebook.name}: the parameters cell must define {name!r}"
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{notebook.name}: kernel must be 'python3', is {kernel!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_sees_every_parameter(notebook):
    """`papermill --help-notebook` and papermill's injection know a parameter only if its line parses (papermill
    skips any line with two "=", e.g. a default like "dp=2 tp=2"): every assignment must be visible to it."""
    import ast

    import papermill

    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = {target.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert assigned == set(papermill.inspect_notebook(str(notebook))), notebook.name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    import papermill

    case = _load_case(notebook)
    results_path = tmp_path / "results.json"
    parameters = dict(case.PARAMETERS, results_path=str(results_path), out_dir=str(tmp_path / "out"))
    papermill.execute_notebook(
        str(notebook), str(tmp_path / notebook.name), parameters=parameters, kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False, execution_timeout=getattr(case, "TIMEOUT_S", 600),
    )
    assert results_path.exists(), f"{notebook.name} did not write its results JSON"
    case.check(json.loads(results_path.read_text()))
