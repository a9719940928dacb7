"""Autocast choice: bf16 only where the CPU computes it natively."""

import pytest
import torch

from oasisvq import device as distributed
from oasisvq.device import amp_dtype, cpu_has_native_bf16

AVX2 = "flags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not cpu_has_native_bf16(AVX2)
    assert cpu_has_native_bf16(SAPPHIRE)
    assert cpu_has_native_bf16("flags : avx512f avx512_bf16\n")
    # a flag name inside another word does not count
    assert not cpu_has_native_bf16("flags : no_avx512_bf16x\n")


@pytest.mark.parametrize("native", [True, False])
def test_auto_autocast_on_cpu_follows_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    # explicit choices are kept whatever the CPU
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    assert amp_dtype("off", cpu) is None


def test_unknown_amp_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="--amp fp8"):
        amp_dtype("fp8", torch.device("cpu"))
