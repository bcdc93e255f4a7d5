"""The accelerator catalog: sources per number, loose name lookup, custom chips, and "this machine" from probes."""

from __future__ import annotations

import json

import pytest

from workbench.errors import WorkbenchError
from workbench.hardware import (
    UnknownChipError,
    all_chips,
    catalog_table,
    chip_from_dict,
    find_chip,
    load_catalog,
    load_chip_file,
    match_device_name,
    register_chip,
    this_machine,
    unregister_chip,
)
from workbench.hardware.catalog import NUMERIC_FIELDS


def test_every_number_has_a_source_and_a_confidence():
    chips = load_catalog()
    assert len(chips) >= 19  # the shared reference's 17 + A800 + H20
    for chip in chips:
        for field in NUMERIC_FIELDS:
            if getattr(chip, field) is not None:
                src = chip.field_source(field)
                assert src.source and src.confidence in ("high", "medium", "low", "measured", "user"), (chip.chip, field)


def test_fp8_figures_have_their_own_source():
    with_fp8 = [c for c in load_catalog() if c.fp8_dense_tflops]
    assert {c.chip for c in with_fp8} >= {"NVIDIA H100 SXM", "NVIDIA H800 SXM", "NVIDIA H200 SXM", "NVIDIA B200",
                                          "AMD MI300X", "Intel Gaudi 3", "Ascend 950DT", "Google TPU v5p"}
    for chip in with_fp8:
        src = chip.field_source("fp8_dense_tflops")
        assert src.source != chip.source, f"{chip.chip}: FP8 figure has no specific source"
    h100 = find_chip("H100")
    assert h100.peak_flops("fp8") == pytest.approx(2 * h100.peak_flops("bf16"), rel=0.01)
    assert "sparsity" in h100.field_source("fp8_dense_tflops").source


def test_catalog_keeps_the_shared_reference_numbers():
    """The package catalog starts from ../shared/reference/accelerators.csv: same peaks for the same chips."""
    import csv
    from pathlib import Path

    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "accelerators.csv"
    if not ref.exists():
        pytest.skip("shared reference not present")
    changed = {"Ascend 910C"}  # corrected from the CloudMatrix384 paper, see field_sources.csv
    for row in csv.DictReader(ref.read_text().splitlines()):
        if row["chip"] in changed:
            continue
        chip = find_chip(row["chip"])
        for field in ("bf16_dense_tflops", "hbm_gb", "hbm_tb_s", "tdp_w"):
            want = float(row[field]) if row[field] else None
            assert getattr(chip, field) == want, (row["chip"], field)


@pytest.mark.parametrize("name,expected", [
    ("h100", "NVIDIA H100 SXM"), ("H100-SXM", "NVIDIA H100 SXM"), ("NVIDIA H100 SXM5", "NVIDIA H100 SXM"),
    ("A100-80GB", "NVIDIA A100 SXM 80GB"), ("Ascend 910B", "Ascend 910B (generic)"), ("910c", "Ascend 910C"),
    ("H100-SXM (96GB 500W)", "NVIDIA H100 SXM"), ("Ascend 910B (Atlas 900 A2)", "Ascend 910B (generic)"),
    ("h20", "NVIDIA H20"), ("H200", "NVIDIA H200 SXM"), ("tpu v5p", "Google TPU v5p"),
])
def test_loose_names(name, expected):
    assert find_chip(name).chip == expected


def test_unknown_chip_lists_close_matches():
    with pytest.raises(UnknownChipError, match="did you mean.*H100") as info:
        find_chip("H1000")
    assert isinstance(info.value, KeyError) and isinstance(info.value, WorkbenchError)
    assert str(info.value).startswith("unknown chip 'H1000'")  # readable, not KeyError's quoted repr


@pytest.mark.parametrize("typo", ["X", "5", "0C"])
def test_a_one_or_two_letter_fragment_is_not_a_chip(typo):
    """'X' matched AMD MI300X, the one name ending in it: a typo in a notebook's chip list went unnoticed."""
    with pytest.raises(UnknownChipError):
        find_chip(typo)


def test_device_layer_lookups_still_work():
    assert match_device_name("NVIDIA H100 80GB HBM3").chip == "NVIDIA H100 SXM"
    assert match_device_name("NVIDIA H20").chip == "NVIDIA H20"
    assert match_device_name("NVIDIA H200").chip == "NVIDIA H200 SXM"  # longest pattern wins over 'h20'
    assert match_device_name("Ascend910B2").peak_flops("bf16") == pytest.approx(353.89e12)


def test_custom_chip_from_dict_and_base():
    mine = chip_from_dict({"chip": "my-npu", "bf16_dense_tflops": 400, "hbm_gb": 64, "hbm_tb_s": 1.6})
    assert mine.peak_flops("bf16") == 400e12 and mine.field_source("hbm_gb").confidence == "user"
    slow = chip_from_dict({"chip": "H100 slow net", "base": "H100", "scale_out_gb_s_per_chip": 12.5})
    assert slow.bf16_dense_tflops == 989 and slow.scale_out_gb_s_per_chip == 12.5
    assert slow.field_source("scale_out_gb_s_per_chip").source == "user-supplied"
    assert slow.field_source("bf16_dense_tflops").confidence == "high"
    with pytest.raises(WorkbenchError, match="non-negative"):
        chip_from_dict({"chip": "bad", "bf16_dense_tflops": -1})
    with pytest.raises(WorkbenchError, match="unknown field"):
        chip_from_dict({"chip": "bad", "bf16_tflops": 1})
    with pytest.raises(WorkbenchError, match="needs a peak"):
        chip_from_dict({"chip": "bad", "hbm_gb": 10})


def test_custom_chips_from_files_register_by_name(tmp_path):
    (tmp_path / "chips.json").write_text(json.dumps([{"chip": "Lab NPU", "bf16_dense_tflops": 250, "hbm_gb": 48,
                                                      "hbm_tb_s": 1.0, "scale_up_gb_s": 200}]))
    (tmp_path / "chips.csv").write_text("chip,bf16_dense_tflops,hbm_gb,hbm_tb_s\nCSV NPU,100,16,0.5\n")
    chips = load_chip_file(tmp_path / "chips.json") + load_chip_file(tmp_path / "chips.csv")
    try:
        for chip in chips:
            register_chip(chip)
        assert find_chip("lab npu").bf16_dense_tflops == 250
        assert find_chip("CSV-NPU").hbm_gb == 16
        assert {"Lab NPU", "CSV NPU"} <= {c.chip for c in all_chips()}
    finally:
        for chip in chips:
            unregister_chip(chip.chip)
    with pytest.raises(UnknownChipError):
        find_chip("Lab NPU")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        load_chip_file(tmp_path / "bad.json")


def test_the_shipped_catalog_csv_loads_as_a_chip_file(tmp_path, monkeypatch, capsys):
    """`workbench simulate --chips` takes "a CSV with the catalog's columns", but the catalog's own file was refused:
    Ascend 950DT has only an FP8 peak, and a custom chip needed a BF16 or FP32 one."""
    from importlib import resources

    from workbench.cli import main
    from workbench.hardware import catalog

    monkeypatch.setattr(catalog, "_REGISTERED", {})  # what --chips registers is undone after the test
    shipped = resources.files("workbench.hardware").joinpath("accelerators.csv")
    chips = load_chip_file(str(shipped))
    assert [c.chip for c in chips] == [c.chip for c in load_catalog()]
    fp8_only = next(c for c in chips if c.chip == "Ascend 950DT")
    assert fp8_only.peak_flops("fp8") == 1e15 and fp8_only.peak_flops("bf16") is None
    spec = {"model": {"layers": 2, "hidden": 256, "heads": 8, "ffn": 1024, "vocab": 1000}, "seq_len": 256,
            "global_batch": 8, "precision": "fp8", "cluster": {"chip": "Ascend 950DT", "count": 8},
            "layout": {"tp": 8}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["simulate", "--chips", str(shipped), str(tmp_path / "spec.json")]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"]
    (tmp_path / "spec.json").write_text(json.dumps({**spec, "precision": "bf16"}))  # no BF16 peak: one clear error
    assert main(["simulate", "--chips", str(shipped), str(tmp_path / "spec.json")]) == 2
    assert "has no bf16 peak" in capsys.readouterr().err


def test_a_remark_in_parentheses_is_not_needed_to_find_a_chip(monkeypatch):
    """find_chip("Ascend 910") failed although the catalog has "Ascend 910 (2019)": the remark was stripped from the
    query only. Without its remark a name must still be unambiguous and never shadow another chip's name."""
    from workbench.hardware import catalog

    assert find_chip("Ascend 910").chip == find_chip("ascend-910").chip == "Ascend 910 (2019)"
    assert find_chip("Ascend 910B").chip == "Ascend 910B (generic)" and find_chip("910C").chip == "Ascend 910C"
    monkeypatch.setattr(catalog, "_REGISTERED", {})
    for name in ("Lab NPU (rack a)", "Lab NPU (rack b)", "Bench (old)", "Bench"):
        register_chip({"chip": name, "bf16_dense_tflops": 100})
    with pytest.raises(UnknownChipError, match="unknown chip 'Lab NPU'"):  # two chips share the bare name
        find_chip("Lab NPU")
    assert find_chip("Bench").chip == "Bench" and find_chip("Bench (old)").chip == "Bench (old)"


def test_table_rows_carry_sources():
    rows = catalog_table()
    h100 = next(r for r in rows if r["chip"] == "NVIDIA H100 SXM")
    assert h100["bf16_dense_tflops"] == 989 and "datasheet" in h100["bf16_dense_tflops_source"]
    assert h100["scale_up_busbw_gb_s"] == 370 and "nccl-tests" in h100["scale_up_busbw_gb_s_source"]


def test_this_machine_comes_from_the_device_probes(monkeypatch):
    """The device layer's measured peak and bandwidth become the chip's numbers, marked 'measured'."""
    from workbench.device import PeakEstimate, detect

    monkeypatch.setattr(detect.Device, "peak_flops",
                        lambda self, dtype=None, allow_probe=True: PeakEstimate(2.5e11, "measured: fp32 GEMM probe"))
    monkeypatch.setattr(detect.Device, "memory_bandwidth",
                        lambda self, allow_probe=True: PeakEstimate(2.0e10, "measured: 256 MB copy probe"))
    monkeypatch.setattr(detect.Device, "total_memory_bytes", lambda self: 16 * 2**30)
    chip = this_machine("cpu", allreduce_busbw_gb_s=0.5, register=True)
    assert chip.chip.startswith("this machine (cpu")
    assert chip.hbm_gb == 16  # GiB, the catalog's unit
    assert chip.peak_flops("fp32") == pytest.approx(2.5e11) and chip.hbm_tb_s == pytest.approx(0.02)
    assert chip.field_source("fp32_tflops").confidence == "measured"
    assert chip.scale_up_busbw_gb_s == 0.5 and chip.field_source("scale_up_busbw_gb_s").confidence == "user"
    try:  # registered: it joins the catalog's lookups, and the simulator can price a run on it
        assert find_chip("this machine").chip == chip.chip
        from workbench.perfmodel import simulate

        r = simulate({"model": {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "vocab": 256}, "seq_len": 32,
                      "global_batch": 4, "precision": "fp32", "cluster": {"chip": "this machine", "count": 1},
                      "layout": {"tp": 1}})
        assert r["feasible"] and r["step_time_s"] > 0
    finally:
        unregister_chip(chip.chip)


@pytest.mark.parametrize("field, value, message", [
    ("hbm_gb", 10**400, "non-negative number up to"),        # overflowed float() inside the simulator
    ("bf16_dense_tflops", float("inf"), "non-negative number up to"),
    ("scale_up_domain", 2.5, "whole number of chips"),  # was cut to 2 without a word
])
def test_custom_chip_figures_are_checked(field, value, message):
    from workbench.hardware.catalog import chip_from_dict

    with pytest.raises(WorkbenchError, match=message):
        chip_from_dict({"chip": "lab-npu", "bf16_dense_tflops": 100, field: value})


@pytest.mark.parametrize("name, why", [
    ("A100 40GB", "has 80 GB, not 40 GB"), ("A100 PCIe 40GB", "has 80 GB, not 40 GB"),
    ("A800 40GB", "has 80 GB, not 40 GB"), ("H100 PCIe", "is not the PCIe part"), ("H800 PCIe", "is not the PCIe part"),
    ("H100 94GB", "has 80 GB, not 94 GB"),
])
def test_another_memory_size_or_form_factor_is_not_the_catalogued_part(name, why):
    """The loose match ignored memory size and form factor: 'A100 40GB' got the 80 GB part (a spec could 'fit' in
    twice the real memory), 'H100 PCIe' the SXM part's 989 TFLOP/s and 3.35 TB/s."""
    with pytest.raises(UnknownChipError, match=why + ".*custom chip"):
        find_chip(name)


@pytest.mark.parametrize("device_name, expected", [
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 SXM 80GB"), ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("NVIDIA A100-SXM4-40GB", None), ("NVIDIA H100 PCIe", None), ("NVIDIA H100 NVL", None),
    ("NVIDIA GH200 480GB", None),
])
def test_live_device_names_of_other_variants_are_not_catalogued(device_name, expected):
    from workbench.hardware.catalog import match_device_name

    chip = match_device_name(device_name)
    assert (chip.chip if chip else None) == expected


def test_gaudi_3_can_be_simulated_beyond_one_chip():
    """Gaudi 3 had no scale-up or scale-out bandwidth: 8 chips failed with 'has no scale-up bandwidth'."""
    from workbench.perfmodel import simulate

    gaudi = find_chip("Gaudi 3")
    assert (gaudi.scale_up_gb_s, gaudi.scale_out_gb_s_per_chip) == (1050.0, 75.0)
    assert "habana" in gaudi.field_source("scale_up_gb_s").source
    r = simulate({"model": {"preset": "glm4-tiny"}, "seq_len": 1024, "global_batch": 64,
                  "cluster": {"chip": "Gaudi 3", "count": 16}, "layout": {"tp": 8, "dp": 2}})
    assert r["links"] and r["step_time_s"] > 0


@pytest.mark.parametrize("world", [1, 0, -2])
def test_a_gloo_allreduce_needs_two_processes(world):
    """measure_gloo_allreduce(world=1) spawned one process, then divided by 2(world-1) = 0: a ZeroDivisionError."""
    from workbench.hardware import measure_gloo_allreduce

    with pytest.raises(WorkbenchError, match="at least 2 processes"):
        measure_gloo_allreduce(world=world, megabytes=1)


def test_this_machine_on_a_catalogued_chip_keeps_the_datasheet_sources(monkeypatch):
    """On a known GPU the catalog's bf16/fp8 peaks fell back to the chip-level 'measured' label, so the simulator
    read the datasheet peak as an achieved GEMM rate and skipped gemm_eff_max (+11% tokens/s on an H100)."""
    from workbench.device import PeakEstimate, detect
    from workbench.perfmodel.simulator import _rates
    from workbench.perfmodel.spec import parse_spec

    h100 = find_chip("H100")
    monkeypatch.setattr(detect.Device, "catalog_entry", lambda self: h100)
    monkeypatch.setattr(detect.Device, "peak_flops",
                        lambda self, dtype=None, allow_probe=True: PeakEstimate(6.0e13, "measured: fp32 GEMM probe"))
    monkeypatch.setattr(detect.Device, "memory_bandwidth",
                        lambda self, allow_probe=True: PeakEstimate(3.0e12, "measured: 256 MB copy probe"))
    monkeypatch.setattr(detect.Device, "total_memory_bytes", lambda self: 80 * 2**30)
    chip = this_machine("cpu")
    for field in ("bf16_dense_tflops", "fp8_dense_tflops"):
        assert chip.field_source(field) == h100.field_source(field), field
    assert chip.field_source("fp32_tflops").confidence == "measured"
    spec = parse_spec({"model": {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256, "vocab": 256}, "seq_len": 32,
                       "global_batch": 4, "precision": "bf16", "cluster": {"chip": chip, "count": 1},
                       "layout": {"tp": 1}})
    assert _rates(spec)["gemm"] == pytest.approx(989e12 * spec.efficiency.gemm_eff_max)


def test_tpu_v5p_scale_up_domain_is_the_largest_ici_job_not_the_pod():
    """8960 is the v5p pod; Google: 'The largest job that can be scheduled is a 96 cube (6144 chip) job'. Beyond
    6144 chips a job is Multislice, across DCN, and was priced on ICI."""
    v5p = find_chip("TPU v5p")
    assert v5p.scale_up_domain == 6144
    assert "6144" in v5p.field_source("scale_up_domain").source


def test_tpu_v5p_has_its_published_fp8_peak():
    """Google's v5p table gives 459 TFLOP/s for FP8 as for BF16; without it an fp8 spec on v5p was refused."""
    from workbench.perfmodel import simulate

    v5p = find_chip("TPU v5p")
    assert v5p.fp8_dense_tflops == 459 and "FP8" in v5p.field_source("fp8_dense_tflops").source
    r = simulate({"model": {"preset": "glm4-tiny"}, "seq_len": 1024, "global_batch": 64, "precision": "fp8",
                  "cluster": {"chip": "TPU v5p", "count": 8}, "layout": {"dp": 8}})
    assert r["feasible"] and r["step_time_s"] > 0


def test_a_measured_gemm_rate_never_exceeds_the_chips_peak():
    """The generic 910B row had 328 TFLOP/s measured against a 320 dense peak (102%): the figure is from a 910B
    of unstated variant, whose peak must be >= 328, so a B1 or a B2. Rows and custom chips are now checked."""
    from workbench.hardware import catalog

    for chip in load_catalog():
        if chip.measured_gemm_tflops is not None:
            assert chip.measured_gemm_tflops <= chip.bf16_dense_tflops, chip.chip
    assert find_chip("910B").measured_gemm_tflops is None
    for name in ("910B1", "910B2"):
        chip = find_chip(name)
        assert chip.measured_gemm_tflops == 328
        assert "variant not stated" in chip.field_source("measured_gemm_tflops").source
    row = next(r for r in catalog._read_package_csv("accelerators.csv") if r["chip"] == "Ascend 910B1")
    with pytest.raises(WorkbenchError, match="measured_gemm_tflops = 400 .*above its bf16 dense peak"):
        catalog._row_to_chip({**row, "measured_gemm_tflops": "400"})
    with pytest.raises(WorkbenchError, match="measured_gemm_tflops = 500 .*above its bf16 dense peak"):
        chip_from_dict({"chip": "lab-npu", "bf16_dense_tflops": 400, "measured_gemm_tflops": 500})
    # overrides are checked too (they were not: a lowered peak under the B1's inherited 328 was priced), and the
    # message says how to drop an inherited rate
    with pytest.raises(WorkbenchError, match="measured_gemm_tflops = 328 .*measured_gemm_tflops: null drops"):
        find_chip("910B1").with_overrides(bf16_dense_tflops=300)
    with pytest.raises(WorkbenchError, match="measured_gemm_tflops = 1200 .*above its bf16 dense peak"):
        find_chip("H100").with_overrides(measured_gemm_tflops=1200)
    assert find_chip("910B1").with_overrides(bf16_dense_tflops=300, measured_gemm_tflops=None).measured_gemm_tflops is None
    with pytest.raises(WorkbenchError, match="measured_gemm_tflops: null drops"):
        chip_from_dict({"chip": "my910", "base": "Ascend 910B1", "bf16_dense_tflops": 300})
    dropped = chip_from_dict({"chip": "my910", "base": "Ascend 910B1", "bf16_dense_tflops": 300,
                              "measured_gemm_tflops": None})
    assert dropped.measured_gemm_tflops is None


def test_grace_superchip_gpus_are_not_their_hgx_namesakes():
    """'NVIDIA GB200' (torch's name for a Grace-Blackwell GPU) matched the B200 row by substring, so MFU divided by
    the HGX B200's 2250 TFLOP/s, with its 180 GB, 1000 W and 8-GPU NVLink domain; 'GH200 144G' got the H200 SXM."""
    gb200 = match_device_name("NVIDIA GB200")
    assert gb200 is not None and gb200.chip == "NVIDIA GB200" and find_chip("GB200") is gb200
    assert (gb200.bf16_dense_tflops, gb200.fp8_dense_tflops, gb200.hbm_gb, gb200.hbm_tb_s, gb200.tdp_w,
            gb200.scale_up_domain) == (2500, 5000, 186, 8.0, 1200, 72)
    for field in ("bf16_dense_tflops", "fp8_dense_tflops", "hbm_gb", "scale_up_domain", "scale_out_gb_s_per_chip"):
        assert gb200.field_source(field).source != gb200.source, field  # each figure says where it is from
    assert match_device_name("NVIDIA B200").chip == "NVIDIA B200"
    for name in ("NVIDIA GH200 144G HBM3e", "NVIDIA GH200 480GB", "NVIDIA GB300"):
        assert match_device_name(name) is None, name
    with pytest.raises(UnknownChipError):
        find_chip("GH200")


@pytest.mark.parametrize("device_name", [
    "Ascend910_9391", "Ascend910_9362", "Ascend910B2C", "Ascend910B4_1", "Ascend910B4-1", "Ascend910A",
    "Ascend910ProB", "Ascend910_9599", "AMD Instinct MI300X", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3",
])
def test_a_name_the_device_layer_reports_is_a_chip_name_too(device_name):
    """`workbench info` prints torch's device name ('npu (Ascend910_9391)'); copied into a spec or notebook 05's
    chips, find_chip refused it (and suggested B3/B1/910, never the 910C die) though the device layer matches it."""
    assert find_chip(device_name).chip == match_device_name(device_name).chip


def test_a_typed_name_still_wins_over_a_device_name():
    """'Ascend910B' is torch_npu's name for a first-generation 910 but what people write for the 2023 910B: copied
    from `workbench info` it gave the 2023 chip (256 vs 320 TFLOP/s), so that spelling is refused as ambiguous; with
    a space it is the 2023 chip, and SoC names that mean one chip resolve as the device layer reads them."""
    with pytest.raises(UnknownChipError, match="ambiguous.*'Ascend 910 \\(2019\\)'.*'Ascend 910B \\(generic\\)'"):
        find_chip("Ascend910B")
    assert find_chip("Ascend 910B").chip == find_chip("910B").chip == "Ascend 910B (generic)"
    assert find_chip("Ascend910B3").chip == "Ascend 910B3" and find_chip("Ascend910A").chip == "Ascend 910 (2019)"
    assert match_device_name("Ascend910B").chip == "Ascend 910 (2019)"
    for not_a_device_name in ("H1000", "H100 slow net"):  # a device pattern inside a longer name is not enough
        with pytest.raises(UnknownChipError):
            find_chip(not_a_device_name)


def test_a_custom_variant_does_not_hide_the_catalogued_part(monkeypatch):
    """Registered chips were keyed by the loose name ('H100 PCIe', 'H100 SXM' and 'A100 40GB' all became 'h100' or
    'a100'): a custom 'H100 PCIe' replaced the catalog's H100 SXM, even for a spec naming 'NVIDIA H100 SXM'."""
    from workbench.hardware import catalog

    monkeypatch.setattr(catalog, "_REGISTERED", {})
    pcie = register_chip({"chip": "H100 PCIe", "base": "H100", "bf16_dense_tflops": 756, "hbm_tb_s": 2.0})
    a100_40 = register_chip({"chip": "A100 40GB", "base": "A100", "hbm_gb": 40})
    names = {c.chip for c in all_chips()}
    assert {"NVIDIA H100 SXM", "H100 PCIe", "NVIDIA A100 SXM 80GB", "A100 40GB"} <= names
    assert {r["chip"] for r in catalog_table()} == names
    assert find_chip("NVIDIA H100 SXM").bf16_dense_tflops == 989 and find_chip("H100-SXM").chip == "NVIDIA H100 SXM"
    assert find_chip("h100").chip == "NVIDIA H100 SXM"  # the loose name keeps meaning the catalogued part
    assert find_chip("H100 PCIe") is pcie and find_chip("h100-pcie") is pcie
    assert find_chip("NVIDIA A100 SXM 80GB").hbm_gb == 80 and find_chip("A100-80GB").hbm_gb == 80
    assert find_chip("A100 40GB") is a100_40 and find_chip("a100-40gb") is a100_40
    with pytest.raises(UnknownChipError, match="has 80 GB, not 94 GB"):  # neither: the variant check still speaks
        find_chip("A100 94GB")
    # the same exact name (any case) replaces the catalog chip, as documented
    mine = register_chip({"chip": "nvidia h100 sxm", "base": "H100", "scale_out_gb_s_per_chip": 12.5})
    assert find_chip("NVIDIA H100 SXM") is mine and "NVIDIA H100 SXM" not in {c.chip for c in all_chips()}
    unregister_chip("NVIDIA H100 SXM")
    assert find_chip("NVIDIA H100 SXM").scale_out_gb_s_per_chip == 50


def test_a_custom_variant_chip_in_a_spec_file_leaves_the_exact_catalog_name_alone(tmp_path, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.hardware import catalog

    monkeypatch.setattr(catalog, "_REGISTERED", {})
    (tmp_path / "pcie.json").write_text(json.dumps({"chip": "H100 PCIe", "base": "H100", "bf16_dense_tflops": 756,
                                                    "hbm_tb_s": 2.0}))
    (tmp_path / "spec.json").write_text(json.dumps({
        "model": {"preset": "glm4-tiny"}, "seq_len": 256, "global_batch": 16, "precision": "bf16",
        "layout": {"dp": 8}, "cluster": {"chip": "NVIDIA H100 SXM", "count": 8}}))
    assert main(["simulate", str(tmp_path / "spec.json"), "--chips", str(tmp_path / "pcie.json")]) == 0
    assert json.loads(capsys.readouterr().out)["chip"] == "NVIDIA H100 SXM"
