"""FLOPs on every run with a figure, energy and cost per epoch where NVML measured power."""

from __future__ import annotations

from typing import Any

import pytest

from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.sandbox.probes.power import PowerProbe


def _doc(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "tool": "torchdoctor-probes",
        "script": "train.py",
        "outcome": {"kind": "completed-steps", "detail": "stopped after 4 optimizer steps"},
        "mode": "train",
        "steps_completed": 4,
        "loss": {"steps": [0, 1, 2, 3], "values": [1.0, 0.9, 0.8, 0.7]},
    }
    base.update(sections)
    return base


LOADER = {
    "dataset": "ImageFolder",
    "num_workers": 4,
    "pin_memory": True,
    "persistent_workers": True,
    "batches_per_epoch": 5000,
    "batches": 4,
    "wait_s": 0.0,
}


def test_a_cpu_run_reports_its_flops_without_an_mfu() -> None:
    doc = _doc(flops={"flops_per_step": 3 * 10**9, "achieved_tflops": 0.012, "mfu": None})
    hint = probe_findings(doc, "train.py").coverage["8.1"]
    assert hint.verdict == "pass"
    assert "3.000 GFLOP per step" in hint.reason and "12.00 GFLOP/s" in hint.reason
    assert "no MFU" in hint.reason


def test_a_small_step_is_counted_in_its_own_unit_and_none_counted_is_not_a_pass() -> None:
    doc = _doc(flops={"flops_per_step": 24_576, "achieved_tflops": 2e-6, "mfu": None})
    hint = probe_findings(doc, "train.py").coverage["8.1"]
    assert hint.verdict == "pass"
    assert "24.576 kFLOP per step" in hint.reason and "2.00 MFLOP/s" in hint.reason
    doc = _doc(flops={"flops_per_step": 0, "achieved_tflops": 0.0, "mfu": None})
    hint = probe_findings(doc, "train.py").coverage["8.1"]
    assert hint.verdict == "not-checked" and "counted no matrix multiply" in hint.reason


def test_gpu_energy_becomes_joules_kwh_and_cost_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_KWH_PRICE", "0.30")
    doc = _doc(
        flops={
            "flops_per_step": 10**12,
            "achieved_tflops": 400.0,
            "mfu": 0.40,
            "device_name": "NVIDIA H200",
            "peak_bf16_tflops": 989.4,
        },
        energy={"source": "pynvml", "samples": 80, "mean_watts": 600.0, "joules_per_step": 72.0},
        dataloader={"loaders": [LOADER]},
    )
    reason = probe_findings(doc, "train.py").coverage["8.1"].reason
    # 72 J x 5000 batches = 360 kJ = 0.1 kWh, at 0.30 per kWh: 0.03
    assert "600 W" in reason and "72.00 J per step" in reason
    assert "0.1000 kWh per 5000-batch epoch (0.0300 at 0.3/kWh)" in reason


def test_low_mfu_finding_carries_the_energy() -> None:
    doc = _doc(
        flops={
            "flops_per_step": 10**12,
            "achieved_tflops": 50.0,
            "mfu": 0.05,
            "device_name": "NVIDIA H200",
            "peak_bf16_tflops": 989.4,
        },
        energy={
            "source": "nvml-ctypes",
            "samples": 30,
            "mean_watts": 250.0,
            "joules_per_step": 5.0,
        },
    )
    [finding] = probe_findings(doc, "train.py").findings
    assert "5.00 J per step" in finding.message


def test_without_nvml_the_power_probe_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchdoctor.sandbox.probes.power as power

    monkeypatch.setattr(power, "_pynvml_reader", lambda: None)
    monkeypatch.setattr(power, "_ctypes_reader", lambda: None)
    probe = PowerProbe()
    probe.start()
    probe.steady()
    probe.stop()
    assert probe.report(0.1) is None


def test_the_power_probe_integrates_steady_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchdoctor.sandbox.probes.power as power

    monkeypatch.setattr(power, "_pynvml_reader", lambda: lambda: 300.0)
    monkeypatch.setattr(power, "INTERVAL_S", 0.001)
    probe = PowerProbe()
    probe.start()
    probe.steady()
    while len(probe._samples) < 5:
        pass
    probe.stop()
    report = probe.report(0.2)
    assert report is not None and report["source"] == "pynvml"
    assert report["mean_watts"] == 300.0 and report["joules_per_step"] == pytest.approx(60.0)
