"""Dense (no sparsity) bf16 tensor-core peaks, in TFLOP/s, by GPU name: the MFU denominator.

Data, not logic: matched in order against `torch.cuda.get_device_name()`, first hit wins,
so the more specific names come first. Figures are vendor datasheet values for dense bf16
with fp32 accumulation.
"""

from __future__ import annotations

PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.2),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
)


def peak_tflops(device_name: str) -> float | None:
    for needle, peak in PEAK_BF16_DENSE_TFLOPS:
        if needle in device_name:
            return peak
    return None
