"""Notebook parameter validation: papermill's strings become typed values, bad values get one clear message."""

import pytest

from workbench.errors import WorkbenchError
from workbench.params import Param, validate_params

SCHEMA = {
    "steps": Param(int, min=1),
    "lr": Param(float, min=0.0),
    "device": Param(str, choices=["auto", "cpu", "cuda", "npu"]),
    "compile": Param(bool),
    "data": Param(str, allow_none=True),
    "ops": Param(list, choices=["attention", "rms_norm"]),
}


def test_strings_from_papermill_are_coerced():
    clean = validate_params({"steps": "10", "lr": "3e-4", "device": "cpu", "compile": "false", "data": "None",
                             "ops": "attention, rms_norm"}, SCHEMA)
    assert clean == {"steps": 10, "lr": 3e-4, "device": "cpu", "compile": False, "data": None,
                     "ops": ["attention", "rms_norm"]}


def test_native_values_pass_through():
    clean = validate_params({"steps": 5, "lr": 0.1, "device": "auto", "compile": True, "data": "x.txt",
                             "ops": ["rms_norm"]}, SCHEMA)
    assert clean["steps"] == 5 and clean["compile"] is True and clean["ops"] == ["rms_norm"]


@pytest.mark.parametrize("name, value, expected", [
    ("steps", "-3", "below its minimum"),
    ("steps", "2.5", "not a valid int"),
    ("steps", True, "not a valid int"),
    ("lr", "fast", "not a valid float"),
    ("device", "tpu", "not one of"),
    ("compile", "maybe", "not a valid bool"),
    ("ops", "attention,conv", "not one of"),
])
def test_bad_values_are_named(name, value, expected):
    values = {"steps": 1, "lr": 0.1, "device": "cpu", "compile": False, "data": None, "ops": []}
    values[name] = value
    with pytest.raises(WorkbenchError, match=expected) as err:
        validate_params(values, SCHEMA)
    assert repr(name) in str(err.value)


def test_all_problems_are_reported_together():
    with pytest.raises(WorkbenchError) as err:
        validate_params({"steps": "0", "lr": "x", "typo": 1}, SCHEMA)
    text = str(err.value)
    assert "'steps'" in text and "'lr'" in text and "typo" in text and "'device' is missing" in text


def test_list_parameters_take_one_value_check_items_and_length():
    """papermill's `-p moe_experts 4` arrives as the int 4 (`list(4)` raised); items were never type-checked, so
    'abc' or 0 failed cells later; an empty list ran an empty notebook."""
    counts = Param(list, item=int, min=1, min_items=1)
    assert counts.coerce("counts", 4) == [4]
    assert counts.coerce("counts", "8, 16") == [8, 16]
    assert counts.coerce("counts", [2, "32"]) == [2, 32]
    for bad, message in (("8,abc", "not a valid int"), ("4,-8", "below its minimum"), ("", "at least 1 item"),
                         ([], "at least 1 item")):
        with pytest.raises(WorkbenchError, match=message):
            counts.coerce("counts", bad)


@pytest.mark.parametrize("value", ["nan", float("nan"), "inf", float("-inf")])
def test_floats_must_be_finite(value):
    """NaN passed `min=1.0, max=3.0`: every comparison with NaN is False."""
    with pytest.raises(WorkbenchError, match="finite number"):
        Param(float, min=1.0, max=3.0).coerce("pue", value)
    with pytest.raises(WorkbenchError, match="finite number"):
        Param(float, min=1.0).coerce("train_tokens", value)


def test_strings_must_not_be_empty():
    """results_path="" was accepted and failed only when the last cell wrote the results, after the whole run."""
    with pytest.raises(WorkbenchError, match="'results_path' must not be empty"):
        Param(str).coerce("results_path", "  ")
    assert Param(str, allow_none=True).coerce("model_overrides", "") is None


def test_a_misspelled_notebook_parameter_is_an_error_on_the_first_run_only(tmp_path):
    """papermill's `-p preest glm45-tiny` defined a new global beside the parameters and trained the default
    preset; papermill only logged 'Passed unknown parameter'. A re-run of the cell, after later cells defined
    variables of their own, must not take those for parameters."""
    import os

    values = {"steps": 1, "lr": 0.1, "device": "cpu", "compile": False, "data": None, "ops": []}
    namespace = {**values, "steeps": 10, "In": [], "_i1": "", "os": os, "Param": Param,  # kernel names, imports
                 "FULL_SIZE": ("glm-5",),  # an imported constant
                 "home": "/root"}  # an IPython startup file's variable: in every kernel, nobody's typo
    with pytest.raises(WorkbenchError, match=r"unknown parameter 'steeps' \(did you mean 'steps'\?\)") as err:
        validate_params(values, SCHEMA, namespace=namespace)
    assert "home" not in str(err.value) and "FULL_SIZE" not in str(err.value)
    with pytest.raises(WorkbenchError, match=r"unknown parameter 'LR' \(did you mean 'lr'\?\)"):
        validate_params(values, SCHEMA, namespace={**namespace, "LR": 0.5})
    del namespace["steeps"]
    assert validate_params(values, SCHEMA, namespace=namespace) == values
    namespace["table"] = [1, 2]  # a later cell's variable, then the validation cell again
    assert validate_params(values, SCHEMA, namespace=namespace) == values


def test_results_path_must_name_a_file(tmp_path):
    """A results_path naming a folder failed in the notebook's last cell, after the whole run."""
    schema = {"results_path": Param(str)}
    with pytest.raises(WorkbenchError, match="is a folder; give a file"):
        validate_params({"results_path": str(tmp_path)}, schema)
    assert validate_params({"results_path": str(tmp_path / "r.json")}, schema)["results_path"].endswith("r.json")
