"""What the machine can do: its CPU, the vector extensions that set how fast float32 and bf16 products run, and
whether bf16 pays here (``fast_bf16``). Benchmarks record ``machine_info()`` beside their numbers."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_features() -> list[str]:
    """Those of the CPU's vector extensions that set how fast float32 and bf16 products run (torch's table)."""
    import torch

    table = getattr(torch._C._cpu, "_get_cpu_capability", None)
    try:
        have = table() if table is not None else {}
    except (RuntimeError, TypeError):
        have = {}
    return [name for name in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if have.get(name)]


def fast_bf16() -> bool:
    """True where bf16 matrix products are fast: a CUDA device that supports bf16, or a CPU with AMX or avx512_bf16.
    Measured on 2 cores: a Xeon with AMX ran 435 GMAC/s in bf16 against 122 in float32; an EPYC with avx512_bf16 (no
    AMX) a (2048 x 896) @ (896 x 39,237) product 3.2x faster in bf16 and SmolLM2-135M's forward under bf16 autocast
    1.5x faster; an AVX2-only EPYC ran bf16 products ~300x slower than float32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_features()))


def autocast_bf16(model, bf16: bool):
    """bf16 autocast on ``model``'s device (its products in bf16, for forward passes without gradients), or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    import torch

    device = getattr(model, "device", None)  # a transformers model's; cpu for anything else
    return torch.autocast(device.type if isinstance(device, torch.device) else "cpu", dtype=torch.bfloat16)


def use_bf16(precision: str) -> bool:
    """Whether a run of ``precision`` (float32, bf16, auto) computes in bf16; bf16 asked for where its products are
    slow gets a warning."""
    fast = fast_bf16()
    if precision == "bf16" and not fast:
        log.warning("precision bf16 on a machine without fast bf16 products (no CUDA bf16, no AMX or avx512_bf16): they run far "
                    "slower than float32 here (~300x on an AVX2 CPU); use precision float32 or auto")
    return precision == "bf16" or (precision == "auto" and fast)


def machine_info() -> dict[str, Any]:
    """The machine a number was measured on, its CPU included: this project's 2-core machines have been an AVX2-only
    AMD EPYC (bf16 products ~300x slower than float32), an Intel Xeon with AMX (bf16 ~3.6x faster) and an AMD EPYC
    with AVX-512 and avx512_bf16 (bf16 ~3.2x faster)."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
