"""The device layer: detection, clear errors for missing devices, dtype choice, timers, memory, peaks and probes."""

from __future__ import annotations

import json
import types

import pytest
import torch

from workbench.device import DeviceUnavailableError, get_device
from workbench.device import detect, probes


def test_auto_picks_cpu_here_with_gloo():
    dev = get_device("auto")
    assert dev.type == "cpu"  # CI has no accelerator
    assert dev.torch_device == torch.device("cpu")
    assert dev.dist_backend == "gloo"
    assert dev.count == 1


@pytest.mark.parametrize("kind, backend", [("cpu", "gloo"), ("cuda", "nccl"), ("npu", "hccl"), ("xpu", "xccl")])
def test_backend_per_device_type(kind, backend):
    assert detect.Device(kind).dist_backend == backend


def test_missing_npu_names_the_extra_and_cann():
    with pytest.raises(DeviceUnavailableError) as err:
        get_device("npu")
    message = str(err.value)
    assert "torch_npu" in message and "npu" in message and "CANN" in message


def test_missing_cuda_says_how_to_get_it():
    with pytest.raises(DeviceUnavailableError, match="CUDA build of torch"):
        get_device("cuda:0")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu"])
def test_unknown_device_strings_are_rejected(spec):
    with pytest.raises(ValueError):
        get_device(spec)


def test_cpu_index_out_of_range():
    with pytest.raises(DeviceUnavailableError, match="only 1"):
        get_device("cpu:3")


def test_torch_npu_import_is_guarded(monkeypatch):
    """A torch_npu that fails to import (no CANN) makes npu unavailable with the reason, not a crash."""
    detect._import_torch_npu.cache_clear()
    monkeypatch.setattr(detect.importlib.util, "find_spec", lambda name: object() if name == "torch_npu" else None)

    def broken_import(name):
        raise ImportError("libascendcl.so: cannot open shared object file")

    monkeypatch.setattr(detect.importlib, "import_module", broken_import)
    try:
        assert "npu" not in detect.available_device_types()
        with pytest.raises(DeviceUnavailableError, match="libascendcl"):
            get_device("npu")
    finally:
        detect._import_torch_npu.cache_clear()


def test_fake_npu_backend_is_detected_first(monkeypatch):
    """With a (fake) loadable torch_npu and an npu backend that reports devices, auto picks npu and hccl."""
    detect._import_torch_npu.cache_clear()
    fake_npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 8,
                                     get_device_name=lambda i: "Ascend910B2")
    monkeypatch.setattr(detect, "_import_torch_npu", lambda: (types.ModuleType("torch_npu"), None))
    monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
    dev = get_device("auto")
    assert (dev.type, dev.dist_backend, dev.count, dev.name) == ("npu", "hccl", 8, "Ascend910B2")
    peak = dev.peak_flops(torch.bfloat16, allow_probe=False)
    assert peak.source.startswith("catalog: Ascend 910B2")
    assert peak.value == pytest.approx(353.89e12)
    assert dev.fast_bf16()[0] is True and dev.training_dtype == torch.bfloat16


def test_training_dtype_follows_measured_bf16_speed(monkeypatch):
    dev = detect.Device("cpu")
    monkeypatch.setattr(detect, "cpu_flags", lambda: frozenset({"avx2"}))
    assert dev.fast_bf16()[0] is False and dev.training_dtype == torch.float32
    dev = detect.Device("cpu")
    monkeypatch.setattr(detect, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(probes, "measure_bf16_speedup", lambda d: 3.0)
    assert dev.fast_bf16()[0] is True and dev.training_dtype == torch.bfloat16
    dev = detect.Device("cpu")
    monkeypatch.setattr(probes, "measure_bf16_speedup", lambda d: 0.6)
    assert dev.training_dtype == torch.float32 and "0.60x" in dev.fast_bf16()[1]


def test_dtype_env_override(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DTYPE", "bf16")
    assert get_device("cpu").training_dtype == torch.bfloat16
    monkeypatch.setenv("WORKBENCH_DTYPE", "int3")
    with pytest.raises(ValueError, match="unknown dtype"):
        get_device("cpu").training_dtype


def test_timer_measures_elapsed_time():
    import time

    dev = get_device("cpu")
    with dev.timer() as t:
        time.sleep(0.05)
    assert 0.04 < t.elapsed_s < 1.0


def test_memory_stats_on_cpu_report_rss():
    stats = get_device("cpu").memory_stats()
    assert stats["allocated_bytes"] > 0 and stats["peak_bytes"] >= stats["allocated_bytes"]
    assert "RSS" in stats["source"]


def test_gemm_probe_is_plausible_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    dev = get_device("cpu")
    first = dev.peak_flops(torch.float32)
    assert first.source.startswith("measured: fp32 GEMM probe")
    assert 1e9 < first.value < 1e13  # between 1 GFLOP/s and 10 TFLOP/s on any CPU
    cached = json.loads((tmp_path / "probes.json").read_text())
    assert any(key.startswith("gemm-fp32|cpu") for key in cached)
    monkeypatch.setattr(probes, "measure_gemm_peak", lambda *a, **k: pytest.fail("probe ran again despite cache"))
    second = dev.peak_flops(torch.float32)
    assert second.value == first.value and "cached" in second.source


def test_bandwidth_probe_is_plausible(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    value, how = probes.measure_memory_bandwidth(get_device("cpu"), megabytes=32, min_time_s=0.05)
    assert 1e8 < value < 1e13 and "copy probe" in how


def test_probing_can_be_disabled():
    peak = get_device("cpu").peak_flops(torch.float32, allow_probe=False)
    assert peak.value is None and "unknown" in peak.source


def test_catalog_matches_torch_device_names():
    from workbench.hardware import match_device_name

    assert match_device_name("NVIDIA H100 80GB HBM3").chip == "NVIDIA H100 SXM"
    assert match_device_name("NVIDIA H200").chip == "NVIDIA H200 SXM"
    assert match_device_name("Ascend910B2").chip == "Ascend 910B2"
    assert match_device_name("Intel(R) Xeon(R) Processor") is None


def test_ascend_soc_names_map_to_their_generation_and_catalog_row():
    """torch_npu's SocVersion table: a plain 'Ascend910B' is SoC 104, a first-generation 910 (it matched the 2023
    910B, 320 instead of 256 TFLOPS, and no bf16); an Atlas A3 device (Ascend910_93xx) is one die of a 910C, so
    MFU there divides by half the package's peak (it divided by the whole package: MFU halved); a 310 inference
    card is not catalogued."""
    from workbench.device import ascend
    from workbench.hardware import find_chip, match_device_name

    assert match_device_name("Ascend910B").chip == "Ascend 910 (2019)"
    assert match_device_name("Ascend910ProB").chip == "Ascend 910 (2019)"
    assert match_device_name("Ascend910B3").chip == "Ascend 910B3"
    die = match_device_name("Ascend910_9391")
    assert die.chip == "Ascend 910C die" and match_device_name("Ascend910C2") == die
    assert die.peak_flops("bf16") == pytest.approx(find_chip("Ascend 910C").peak_flops("bf16") / 2)
    assert match_device_name("Ascend310P3") is None
    assert match_device_name("Ascend910_9599").chip == match_device_name("Ascend950").chip == "Ascend 950DT"
    assert find_chip("910C").chip == "Ascend 910C"  # typed names still find the package
    generations = {name: ascend.ascend_generation(name) for name in
                   ("Ascend910A", "Ascend910B", "Ascend910B1", "Ascend910B4_1", "Ascend910_9362", "Ascend950",
                    "Ascend910_9599", "Ascend310P3", "NVIDIA H100")}
    assert generations == {"Ascend910A": ascend.FIRST_910, "Ascend910B": ascend.FIRST_910,
                           "Ascend910B1": ascend.A2, "Ascend910B4_1": ascend.A2, "Ascend910_9362": ascend.A3,
                           "Ascend950": ascend.A5, "Ascend910_9599": ascend.A5, "Ascend310P3": ascend.INFERENCE_310,
                           "NVIDIA H100": None}


def test_device_table_lists_every_type_with_reasons():
    rows = {row["type"]: row for row in detect.device_table()}
    assert set(rows) == {"cpu", "cuda", "npu", "xpu", "mps"}
    assert rows["cpu"]["available"] and rows["cpu"]["training_dtype"] in ("fp32", "bf16")
    assert not rows["npu"]["available"] and rows["npu"]["reason"]


def test_auto_prefers_what_torch_accelerator_reports(monkeypatch):
    """torch.accelerator names the accelerator (here a fake xpu); auto follows it when that type works."""
    fake_xpu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                     get_device_name=lambda i: "Intel Data Center GPU Max", synchronize=lambda: None)
    monkeypatch.setattr(torch, "xpu", fake_xpu, raising=False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("xpu"))
    synced = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda index=None: synced.append(index))
    dev = get_device("auto")
    assert (dev.type, dev.dist_backend, dev.count) == ("xpu", "xccl", 2)
    dev.synchronize()
    assert synced == [None]


def test_auto_ignores_an_accelerator_type_that_does_not_work(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    assert get_device("auto").type == "cpu"  # the cpu build has no working cuda, whatever is reported


@pytest.mark.parametrize("content", ['[]', '"x"', 'null', '{"k": "a string"}', '{"k": {"value": 1.0}}',
                                     '{"k": {"value": 0, "detail": "zero"}}', '{"k": {"value": true, "detail": "b"}}'])
def test_a_damaged_probe_cache_costs_a_re_probe_not_a_crash(tmp_path, monkeypatch, content):
    """Valid JSON that is not a dict of entries crashed info/profile/train with a TypeError (or a KeyError shown as
    the message 'detail'); a cached 0 was used as the MFU peak."""
    from workbench.device import probes

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    probes.cache_path().parent.mkdir(parents=True, exist_ok=True)
    probes.cache_path().write_text(content.replace('"k"', json.dumps("the-key")))
    assert probes._cached("the-key", lambda: (2.0, "measured again")) == (2.0, "measured again")
    assert probes._read_cache()["the-key"]["value"] == 2.0


def test_the_bf16_probe_takes_the_best_of_interleaved_rounds(monkeypatch, tmp_path):
    """One fp32 and one bf16 run decided the training dtype for good: a lucky bf16 sample under load (1 in 12 here)
    made this CPU train in bf16, 2x slower than fp32."""
    from workbench.device import probes

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    samples = {torch.float32: iter([100.0, 40.0, 90.0]), torch.bfloat16: iter([150.0, 60.0, 55.0])}
    order = []

    def fake_gemm(device, dtype, sizes, min_time_s):
        order.append(dtype)
        return next(samples[dtype]), "fake"

    monkeypatch.setattr(probes, "measure_gemm_peak", fake_gemm)
    ratio = probes.measure_bf16_speedup(get_device("cpu"))
    assert order == [torch.float32, torch.bfloat16] * 3 and ratio == pytest.approx(150.0 / 100.0)


def test_info_names_a_dtype_the_user_forced(monkeypatch):
    """With WORKBENCH_DTYPE=bf16, info printed 'training dtype bf16 [measured: ... < 1.25x needed to train in bf16]'
    and never named the override."""
    monkeypatch.setenv("WORKBENCH_DTYPE", "bf16")
    info = get_device("cpu").describe()
    assert info["training_dtype"] == "bf16" and info["training_dtype_source"].startswith("WORKBENCH_DTYPE=bf16")


def test_concurrent_probes_keep_every_entry(tmp_path, monkeypatch):
    """The cache's read-modify-write had no lock: 4 concurrent `workbench info` runs kept 5 of 6 entries at times."""
    import multiprocessing

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=probes._cached, args=(f"key-{i}", lambda i=i: (float(i + 1), "fake")))
               for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(probes._read_cache()) == sorted(f"key-{i}" for i in range(8))


@pytest.mark.parametrize("supported, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_npu_bf16_follows_torch_npu_is_bf16_supported(monkeypatch, supported, dtype):
    """bf16 was assumed on every NPU; a 910A runs fp16 only (torch_npu disables bf16 autocast there with a warning),
    so training ran in fp32 while reporting bf16 and measuring MFU against a bf16 peak."""
    detect._import_torch_npu.cache_clear()
    fake_npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                                     get_device_name=lambda i: "Ascend910PremiumA",
                                     is_bf16_supported=lambda: supported)
    monkeypatch.setattr(detect, "_import_torch_npu", lambda: (types.ModuleType("torch_npu"), None))
    monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
    dev = get_device("npu")
    assert dev.fast_bf16()[0] is supported and dev.training_dtype == dtype
    assert "is_bf16_supported" in dev.fast_bf16()[1]


def test_fused_adamw_is_not_assumed_on_npu():
    assert detect.Device("cpu").supports_fused_adamw()
    assert not detect.Device.supports_fused_adamw(types.SimpleNamespace(type="npu"))  # no torch_npu needed


@pytest.mark.parametrize("name", ["fp16", "float16", "half"])
def test_fp16_training_is_refused_with_the_reason(monkeypatch, tmp_path, name):
    """WORKBENCH_DTYPE=fp16 trained under fp16 autocast with no loss scaling: 1.6% of the hidden-state gradients
    underflowed to zero at one micro-batch, 12.6% with 8 (grad accumulation)."""
    from workbench.errors import WorkbenchError

    from workbench.cli import main
    from workbench.train import TrainConfig, Trainer

    monkeypatch.setenv("WORKBENCH_DTYPE", name)
    with pytest.raises(WorkbenchError, match=r"fp16.*loss scaling.*bf16 or fp32"):
        Trainer(TrainConfig(device="cpu", out_dir=str(tmp_path / "run"), progress=False), log=lambda line: None)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    # what only reads the dtype still works: `workbench info` failed on the refusal
    assert get_device("cpu").training_dtype == torch.float16
    assert main(["info", "--device", "cpu", "--json"]) == 0


def test_an_fsdp_compute_dtype_of_fp16_is_refused():
    """FSDP2's param_dtype=fp16 is fp16 training too (gradients computed in fp16), with no loss scaling."""
    from workbench.distributed.parallelize import parallelize
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="loss scaling"):
        parallelize(torch.nn.Linear(2, 2), "dp=1", param_dtype="fp16")


GRAVITON3_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def test_arm_cpus_with_bf16_are_probed(monkeypatch):
    """arm64 Linux names the flags line 'Features': Graviton3/Grace were never probed and always trained in fp32
    with the reason 'CPU lacks AMX/AVX512-BF16'."""
    import io

    monkeypatch.setattr(detect, "open", lambda path, *a, **k: io.StringIO(GRAVITON3_CPUINFO), raising=False)
    monkeypatch.setattr(detect.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(probes, "measure_bf16_speedup", lambda device: 2.0)
    detect.cpu_flags.cache_clear()
    try:
        assert {"bf16", "sve", "asimd"} <= detect.cpu_flags()
        fast, how = detect.Device("cpu").fast_bf16()
        assert fast and how.startswith("measured: bf16 GEMM runs 2.00x")
    finally:
        detect.cpu_flags.cache_clear()


@pytest.fixture
def mps_host(monkeypatch):
    """An Apple-silicon host: torch.mps is the real module (no memory_allocated), reporting itself available."""
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 1234)
    return get_device("mps")


def test_mps_memory_is_read_from_torch_mps(mps_host):
    """torch.mps has current_allocated_memory, not memory_allocated: every mps run reported 'not tracked'."""
    stats = mps_host.memory_stats()
    assert stats["allocated_bytes"] == 1234 and "current_allocated_memory" in stats["source"]


def test_mps_memory_prefers_torch_accelerator_which_keeps_a_peak(mps_host, monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a: torch.device("mps"))
    monkeypatch.setattr(torch.accelerator, "memory_allocated", lambda index=None: 10)
    monkeypatch.setattr(torch.accelerator, "max_memory_allocated", lambda index=None: 20)
    reset = []
    monkeypatch.setattr(torch.accelerator, "reset_peak_memory_stats", lambda index=None: reset.append(index))
    stats = mps_host.memory_stats()
    mps_host.reset_peak_memory()
    assert (stats["allocated_bytes"], stats["peak_bytes"]) == (10, 20) and "torch.accelerator" in stats["source"]
    assert reset == [None]
