"""Each notebook's parameter check, run in-process: a bad value stops at the validation cell with one clear message
(before any work), and papermill's typed values are accepted. Runs only the notebook's parameters cell and the code
cell after it (the one that validates), so a case takes well under a second instead of a kernel start.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from workbench.errors import WorkbenchError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_parameter_cells(name: str, tmp_path: Path, **overrides) -> dict:
    """Execute the `parameters` cell, apply ``overrides`` as papermill would, then the next code cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(nb.cells[index].source, namespace)
    namespace.update(out_dir=str(tmp_path / "out"), results_path=str(tmp_path / "results.json"))
    namespace.update(overrides)
    validation = next(c for c in nb.cells[index + 1:] if c.cell_type == "code")
    exec(validation.source, namespace)
    return namespace


@pytest.mark.parametrize("name, overrides, message", [
    ("00_quickstart.ipynb", dict(preset="glm-5"), "is not one of"),          # full size: 12 TB to build
    ("00_quickstart.ipynb", dict(seq_len=100_000), "beyond the 2048 positions"),
    ("02_kernels.ipynb", dict(moe_experts="8,abc"), "'moe_experts' = 'abc' is not a valid int"),
    ("02_kernels.ipynb", dict(moe_experts="4,-8"), "below its minimum"),
    ("02_kernels.ipynb", dict(ops=""), "'ops' needs at least 1 item"),
    ("02_kernels.ipynb", dict(ops="all,rope"), "'all' stands alone"),
    ("02_kernels.ipynb", dict(check_dtypes=""), "'check_dtypes' needs at least 1 item"),
    ("01_training.ipynb", dict(preset="foo"), "'preset': 'foo' is not one of"),
    ("01_training.ipynb", dict(model_overrides="num_layers=abc"), "num_layers must be an integer"),
    ("01_training.ipynb", dict(model_overrides="bogus=1"), "unknown model setting"),
    ("01_training.ipynb", dict(seq_len=4096), "beyond the 2048 positions"),
    ("01_training.ipynb", dict(data="/no/such/corpus.txt"), "does not exist"),
    ("01_training.ipynb", dict(results_path=""), "'results_path' must not be empty"),
    ("04_profiling.ipynb", dict(impl_b="reference"), "both 'reference'"),
    ("04_profiling.ipynb", dict(impl_a="foo"), "'impl_a' = 'foo' is not an implementation of attention"),
    ("04_profiling.ipynb", dict(preset="glm-4.5-air"), "is not one of"),
    # a misspelled papermill name (-p preest ...) was a new global, ignored: the default preset trained
    ("00_quickstart.ipynb", dict(preest="glm45-tiny"), "unknown parameter 'preest' (did you mean 'preset'?)"),
    ("01_training.ipynb", dict(step=10), "unknown parameter 'step' (did you mean 'steps'?)"),
    ("05_hardware_comparison.ipynb", dict(cuont=64), "unknown parameter 'cuont'"),
    ("03_distributed.ipynb", dict(nprocs=2), "unknown parameter 'nprocs' (did you mean 'nproc'?)"),
    # a folder as results_path failed in the last cell, after the whole run
    ("02_kernels.ipynb", dict(results_path="."), "is a folder; give a file"),
    # notebook 03: a full-size preset (every rank builds the whole model), positions of the tiny model
    ("03_distributed.ipynb", dict(preset="glm-4.5"), "'preset': 'glm-4.5' is not one of"),
    ("03_distributed.ipynb", dict(seq_len=300), "beyond the 256 positions of glm4-tiny as tiny=True builds it"),
    # the naive attention of the memory comparison would not fit (48 GiB at 32768)
    ("02_kernels.ipynb", dict(memory_seq_len=65536), "the naive attention would hold"),
])
def test_bad_parameters_stop_at_the_validation_cell(tmp_path, name, overrides, message):
    with pytest.raises(WorkbenchError) as err:
        run_parameter_cells(name, tmp_path, device="cpu", **overrides)
    assert message in str(err.value)


def test_papermill_typed_values_are_accepted(tmp_path):
    """`papermill -p moe_experts 4` injects the int 4 where the notebook's default is the string "8,16,32,64"."""
    namespace = run_parameter_cells("02_kernels.ipynb", tmp_path, device="cpu", moe_experts=4)
    assert namespace["EXPERTS"] == (4,)


def test_profiling_notebook_cuts_glm5_to_fewer_layers(tmp_path):
    """Notebook 04's default num_layers=2 failed for glm5-tiny: its 4-entry indexer pattern did not fit 2 layers."""
    namespace = run_parameter_cells("04_profiling.ipynb", tmp_path, device="cpu", preset="glm5-tiny", num_layers=3,
                                    seq_len=16, batch_size=1)
    nb = nbformat.read(NOTEBOOKS / "04_profiling.ipynb", as_version=4)
    exec(next(c.source for c in nb.cells if "overrides = {}" in c.source), namespace)
    assert namespace["trainer"].model_config.indexer_types == ("full", "shared", "full")
