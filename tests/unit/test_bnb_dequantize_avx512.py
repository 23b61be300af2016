"""Issue 27, reproduced with plain bitsandbytes calls (no peftcheck pipeline): on a CPU with AVX512F,
``dequantize_4bit`` reads rows whose length is a multiple of 16 but not of the 64-wide block with
the wrong block scales.

``quantize_4bit`` writes one absmax per block of ``blocksize`` consecutive elements of the
flattened weight. bitsandbytes' C kernel (csrc/cpu_ops.cpp, ``dequantizeBlockwise4bitCpu``) takes
its AVX512 branch when ``n % 16 == 0`` (n: the row length), with no check of ``n % blocksize``,
and there reads ``absmax[row * (n // blocksize) + col // blocksize]``: blocks per row, which is the
flat block only where ``n % blocksize == 0``. The scalar branch (AVX2 and older CPUs) indexes the
flat block and is right. The reference here rebuilds the weight from the very codes and scales
the library wrote: code book entry times the absmax of its flat block.

A second finding on the same widths, CPUs with AVX512-BF16 only: ``Linear4bit``'s no-grad eval
forward repacks its weight for the CPU inference kernel (bnb_cpu_packed), and that repacking
assumes ``out_features % 32 == 0`` and ``in_features % blocksize == 0``: other layers raise.

Each test states what should hold; where a finding applies it is a strict expected failure, so
it turns red the day bitsandbytes fixes it. Elsewhere it must pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from peftcheck.checks.registry import XfailSpec

pytestmark = pytest.mark.quant

# from the first release with the AVX512 branch (bitsandbytes PR #1789) to the newest seen
DEQUANTIZE_4BIT_AVX512 = XfailSpec(
    reason="upstream (bitsandbytes >=0.49.0, PR #1789; seen on 0.50.2, CPU with avx512f): dequantize_4bit's "
    "AVX512 branch runs for rows of a multiple of 16 elements and reads absmax[row * (n // blocksize) + "
    "col // blocksize] where quantize_4bit wrote one absmax per flat block of 64: a row length that is not a "
    "multiple of 64 gets other blocks' scales (seed 0: nf4 0.27-0.40 relative error to the float weight at 64x96, "
    "96x80, 64x32, 128x48, 48x48, fp4 0.28-0.41, where the same codes and scales give 0.092 and 0.124; "
    "dequantize_4bit equals that per-row reading bitwise)",
    when={"bitsandbytes": ">=0.49.0"},
    cpu_flags=["avx512f"],
)
# what bnb_cpu_packed's repacking (bitsandbytes PR #1804) assumes of a layer's shape
REPACK_NEEDS_WIDE_LAYERS = XfailSpec(
    reason="upstream (bitsandbytes 0.50.2, CPU with avx512_bf16): Linear4bit's no-grad eval forward repacks the "
    "weight for the CPU kernel (_convert_weight_packed_for_cpu) and raises unless out_features % 32 == 0 "
    "('N must be divisible by block_n') and in_features % 64 == 0 (64x48: \"shape '[64, 0]' is invalid for "
    "input of size 48\")",
    when={"bitsandbytes": ">=0.50.2"},
    cpu_flags=["avx512_bf16"],
)

NARROW = [(64, 96), (64, 32), (96, 80), (128, 48), (48, 48)]  # (out, in): rows a multiple of 16, not of 64
WIDE = [(64, 64), (128, 192), (64, 100), (48, 128)]  # rows a multiple of 64, or not of 16 (the scalar branch)


def _weight(shape: tuple[int, int]) -> Any:
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def flat_reference(packed: Any, state: Any) -> Any:
    """The weight from the codes and scales alone: high nibble first, one absmax per flat block."""
    import bitsandbytes.functional as F
    import torch

    data = packed.reshape(-1).view(torch.uint8)
    codes = torch.empty(data.numel() * 2, dtype=torch.long)
    codes[0::2], codes[1::2] = data >> 4, data & 0xF
    n = state.shape.numel()
    absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
    scales = absmax.float().repeat_interleave(state.blocksize)[:n]
    return (state.code.float()[codes[:n]] * scales).reshape(state.shape)


def _relative(a: Any, b: Any) -> float:
    import torch

    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _check(shape: tuple[int, int], quant_type: str, nested: bool) -> None:
    import bitsandbytes.functional as F
    import torch

    weight = _weight(shape)
    packed, state = F.quantize_4bit(weight, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    dequantized = F.dequantize_4bit(packed, state)
    reference = flat_reference(packed, state)
    assert torch.equal(dequantized, reference), (
        f"{quant_type}{'+dq' if nested else ''} {shape}: dequantize_4bit is {_relative(dequantized, reference):.3f} off "
        f"its own codes and scales; vs the float weight {_relative(dequantized, weight):.3f} "
        f"(the codes and scales: {_relative(reference, weight):.3f})"
    )


@DEQUANTIZE_4BIT_AVX512.mark()
@pytest.mark.parametrize("nested", [False, True], ids=["", "dq"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", NARROW, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dequantize_4bit_reads_the_block_scales_quantize_4bit_wrote(shape: Any, quant_type: str, nested: bool) -> None:
    pytest.importorskip("bitsandbytes")
    _check(shape, quant_type, nested)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", WIDE, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rows_of_whole_blocks_dequantize_to_their_codes_and_scales(shape: Any, quant_type: str) -> None:
    """The control, on every CPU: rows of whole 64-blocks (the shipped models' widths), or of a length
    the AVX512 branch leaves to the scalar loop."""
    pytest.importorskip("bitsandbytes")
    _check(shape, quant_type, nested=False)


def _linear4bit(out_features: int, in_features: int) -> Any:
    import bitsandbytes as bnb
    import torch

    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(_weight((out_features, in_features)), requires_grad=False, quant_type="nf4")
    return layer.to("cpu").eval()  # .to quantizes


@REPACK_NEEDS_WIDE_LAYERS.mark((RuntimeError, AssertionError))
@pytest.mark.parametrize("shape", [(64, 48), (48, 64), (128, 80)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_an_eval_forward_runs_on_a_narrow_linear4bit(shape: Any) -> None:
    """No-grad eval forward of a Linear4bit (what inference, evaluation and generate do) computes
    x @ W.T with W as bitsandbytes dequantizes it (whatever that is on this CPU)."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    import torch

    layer = _linear4bit(*shape)
    expected_weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(3, shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x)
    # the repacked kernel computes in bf16: 1e-2 relative holds it
    assert _relative(out, x @ expected_weight.T) < 1e-2


def test_an_eval_forward_runs_on_a_linear4bit_of_whole_blocks() -> None:
    """The control: 64 x 96 layers of whole 32-row and 64-column blocks run on every CPU."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    import torch

    layer = _linear4bit(96, 64)
    expected_weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x)
    assert _relative(out, x @ expected_weight.T) < 1e-2
