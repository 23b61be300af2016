"""How far each dtype, quantization and method may stray from the exact adapter contracts.

One table, keyed by (dtype or quantization, peft type), says when two outputs count as equal:
float bases compare raw logits (max and mean absolute difference), 4/8-bit bases compare
distributions (KL divergence and top-1 agreement), because their raw logits are not
comparable after a merge re-quantizes the weights. Suites override single fields. What a
method saves in its checkpoint in place of its live tensors also lives here, so the checks
never branch on a method's name. A second table says how close a quantized base must stay to its
float base (quantization_fidelity, issue 27).
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "Fidelity", "FIDELITY", "fidelity_for"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """When two outputs (and two sets of base weights) count as equal.

    A float tolerance bounds ``max_abs``/``mean_abs`` logit differences, a distribution
    tolerance ``max_kl`` and ``min_top1``; a tolerance may hold both kinds. ``weight_rtol`` bounds how far any base
    weight tensor may move, ||W' - W|| / ||W|| (unmerge must restore the base)."""

    max_abs: float | None = None
    mean_abs: float | None = None
    max_kl: float | None = None
    min_top1: float | None = None
    weight_rtol: float = 0.0
    source: str = ""

    @property
    def by_distribution(self) -> bool:
        """Only distribution bounds: raw logits are not compared (4/8-bit bases)."""
        return self.max_abs is None and self.mean_abs is None

    @property
    def judges_distribution(self) -> bool:
        return self.max_kl is not None or self.min_top1 is not None

    def problems(self, diff: Any, what: str) -> list[str]:
        """Why ``diff`` (an outputs.Diff) is not 'equal' under this tolerance; empty if it is."""
        found = []
        if self.max_abs is not None and not diff.max_abs <= self.max_abs:
            found.append(f"{what}: max |Δlogit| {diff.max_abs:.3g} > {self.max_abs:g}")
        if self.mean_abs is not None and not diff.mean_abs <= self.mean_abs:
            found.append(f"{what}: mean |Δlogit| {diff.mean_abs:.3g} > {self.mean_abs:g}")
        if self.max_kl is not None and not diff.kl <= self.max_kl:
            found.append(f"{what}: KL {diff.kl:.3g} > {self.max_kl:g}")
        if self.min_top1 is not None and not diff.top1 >= self.min_top1:
            found.append(f"{what}: top-1 agreement {diff.top1:.4f} < {self.min_top1:g}")
        return found

    def differs(self, diff: Any) -> bool:
        """True when ``diff`` is beyond what this tolerance calls equal (an adapter that does
        something must pass this against the base, or the equality checks prove nothing)."""
        return bool(self.problems(diff, ""))

    def describe(self) -> str:
        bounds = [
            f"max |Δlogit| <= {self.max_abs:g}" if self.max_abs is not None else "",
            f"mean |Δlogit| <= {self.mean_abs:g}" if self.mean_abs is not None else "",
            f"KL <= {self.max_kl:g}" if self.max_kl is not None else "",
            f"top-1 agreement >= {self.min_top1:g}" if self.min_top1 is not None else "",
        ]
        return ", ".join(b for b in bounds if b)

    def override(self, **fields: Any) -> "Tolerance":
        given = {k: v for k, v in fields.items() if v is not None}
        if not given:
            return self
        return dataclasses.replace(self, **given, source=f"{self.source} overridden by the suite ({given})")


# Key: (dtype, peft type) for float bases, (quantization, peft type) for bitsandbytes bases;
# "*" matches any peft type. Each entry's comment says where its numbers come from.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    # Float bases compare raw logits. Measured on SmolLM2-135M (4 held-out quotes, ~80 tokens x
    # 49k logits; LoRA r=8 on q/v moving the weights by ||dW||/||W|| = 0.04-0.06), merged vs
    # unmerged max/mean |dlogit| and the unmerge residue ||W'-W||/||W||:
    # fp32 7e-5 / 7e-6, residue 6e-9: only the summation order differs.
    ("float32", "*"): Tolerance(max_abs=1e-3, mean_abs=1e-4, weight_rtol=1e-5),
    # bf16 (8-bit mantissa): round(W + dW) is one more rounding of every adapted weight. After
    # 10 training steps (suites/quotes_bf16.yaml), merged vs unmerged: 10.3 / 0.18, KL 0.0096,
    # top-1 agreement 0.991 (the first round's run, CPU not recorded); AVX2 (emulated, issue 17):
    # 1.94 / 0.12, KL 0.0020, top-1 0.974; AMD EPYC with AVX512-BF16 (native bf16 GEMMs, another
    # trajectory): 9.6 / 0.18, KL 0.011, top-1 0.966 (4 of 117 tokens), while merge -> unmerge,
    # whose weights are back within 6e-4, is itself at top-1 0.974: near-tie tokens flip under
    # bf16 rounding, so top-1 on 117 tokens cannot be held above ~0.97 (issue 17); KL stays the
    # sharp bound (the adapter's own effect: 22.6 / 1.47, KL 0.21-0.24, top-1 0.71).
    # A merge off by 1% of dW is below this floor: bf16 cannot show it.
    ("bfloat16", "*"): Tolerance(max_abs=16.0, mean_abs=0.35, max_kl=0.05, min_top1=0.95, weight_rtol=4e-3),
    # fp16 (11-bit mantissa, 8x finer than bf16): a random r=8 adapter measured 0.14 / 0.014,
    # residue 9e-5; the bounds are bf16's scaled by 8.
    ("float16", "*"): Tolerance(max_abs=2.0, mean_abs=0.05, weight_rtol=5e-4),
    # 4/8-bit bases: raw logits are not comparable once a merge re-quantizes W+BA, so outputs
    # are judged by the next-token distribution. On SmolLM2-135M the adapter itself moves it by
    # KL 0.3-0.45 (top-1 agreement with the base 0.62-0.69); a merge must stay an order of
    # magnitude closer to the unmerged adapter than that. Base weights are compared
    # dequantized: equal codes dequantize identically, and one flipped code in a 576x576
    # tensor already moves it by ~1e-3 (||W||), so 1e-4 means "no code changed".
    # NF4 computes with the dequantized weights: merged into a dequantized copy is exact
    # (KL 9e-12), so the bound is all merge error.
    ("nf4", "*"): Tolerance(max_kl=0.05, min_top1=0.9, weight_rtol=1e-4),
    ("fp4", "*"): Tolerance(max_kl=0.05, min_top1=0.9, weight_rtol=1e-4),
    # LLM.int8 also quantizes the activations, with outlier columns picked over the whole batch.
    # SmolLM2's int8 base against its own weights dequantized to float: KL 0.025, top-1
    # agreement 0.88; one quote alone against the same quote inside the probe batch: KL 0.023
    # (CPU, bitsandbytes 0.50.2): a row's output depends on the other rows of its batch. Merged
    # vs unmerged measured KL 0.018, top-1 0.91, inside that floor; the bounds sit just past it.
    ("int8", "*"): Tolerance(max_kl=0.05, min_top1=0.85, weight_rtol=1e-4),
}


def tolerance_for(*, dtype: str, quantization: str, peft_type: str) -> Tolerance:
    """The table's tolerance for a base of ``dtype``/``quantization`` and a method's peft type."""
    key = quantization if quantization != "none" else dtype
    for candidate in ((key, peft_type), (key, "*")):
        if candidate in TOLERANCES:
            found = TOLERANCES[candidate]
            return dataclasses.replace(found, source=f"table[{candidate[0]}, {candidate[1]}]")
    raise KeyError(f"no tolerance for {key!r}; the table has {sorted({k for k, _ in TOLERANCES})}")


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """How close a quantized base must stay to the float base it was quantized from: the next-token
    distribution on the probe batch (``max_kl``, ``min_top1``), every quantized layer's weight,
    ||dequantize(W_q) - W|| / ||W|| (``max_layer_error``), and for 4-bit layers bitsandbytes'
    dequantize_4bit against the same codes and scales read as the format defines them, flat blocks
    of ``blocksize`` elements (``max_kernel_error``: a kernel bug, whatever the model)."""

    max_kl: float
    min_top1: float
    max_layer_error: float
    max_kernel_error: float | None = None
    source: str = ""

    def describe(self) -> str:
        kernel = f", dequantize vs its codes and scales <= {self.max_kernel_error:g}" if self.max_kernel_error else ""
        return (f"KL <= {self.max_kl:g}, top-1 agreement >= {self.min_top1:g}, "
                f"layer error <= {self.max_layer_error:g}{kernel}")  # fmt: skip

    def override(self, **fields: Any) -> "Fidelity":
        given = {k: v for k, v in fields.items() if v is not None}
        if not given:
            return self
        return dataclasses.replace(self, **given, source=f"{self.source} overridden by the suite ({given})")


# Key: the scheme the base holds (quantization_fidelity reads it off its layers): int8, nf4, fp4,
# and nf4+dq / fp4+dq with double quantization. Measured (issue 27) on the suites' probe batches,
# float32 base vs the same weights quantized by bitsandbytes 0.50.2 (torch 2.13, transformers
# 5.25), forward on the dequantize path QLoRA trains through. CPUs: "Zen 4" = this project's AMD
# EPYC (avx512f + avx512_bf16, no AMX); "AVX2" = the same machine with torch, MKL and oneDNN held to
# AVX2 and bitsandbytes' int8 matmul on its non-AVX512 path (ATEN_CPU_CAPABILITY=avx2) -- not an
# AVX2 machine: bitsandbytes' C dequantize_4bit still ran its AVX512 branch, which for rows that
# are multiples of 64 is bitwise the scalar branch an AVX2 CPU runs (kernel error 0.0 on every
# layer). Both gave the same figures to 6 digits. Figures: KL / top-1 / worst layer error.
#   SmolLM2-135M, quotes.yaml's probe (117 tokens): int8 0.0277 / 0.838 / 0.0116; nf4 0.305 /
#     0.684 / 0.102; nf4+dq 0.310 / 0.684 / 0.102; fp4 0.602 / 0.427 / 0.147; fp4+dq 0.598 /
#     0.436 / 0.148; resources.yaml's probe (92 tokens, Zen 4 only): int8 0.0254 / 0.902; nf4
#     0.382 / 0.674; nf4+dq 0.388 / 0.674; fp4 0.548 / 0.565; fp4+dq 0.547 / 0.565 (worst layer
#     always layers.0.self_attn.o_proj; the weights are a dequantized GGUF Q4_1, which a second
#     4-bit grid fits badly: a small real model loses much to 4 bits);
#   tiny-llama / tiny-opt (random weights, 88-89 tokens): int8 1e-6 / 0.98 / 0.0066; nf4 2e-4 /
#     0.81-0.84 / 0.095; fp4 2-4e-4 / 0.70-0.81 / 0.126; +dq within 1e-6 / one token of them.
#   The eval path on the Zen 4 (bitsandbytes' repacked AVX512-BF16 kernel) gave the same KL
#   within 1% and the same top-1 within 3 tokens on every model whose widths it accepts.
# Bounds sit 50% or more past the worst figure (KL), 0.09-0.13 under it (top-1, 92-117 tokens), 30%
# past the worst layer: a real model with heavier-tailed weights quantizes worse, and one real
# model is all that was measured. The AVX512 dequantize bug (tiny-llama-w48, rows of 48 and 96)
# puts layers at 0.157-0.347 (nf4) and 0.173-0.363 (fp4) while the same codes and scales read as
# flat blocks give 0.090-0.094 / 0.120-0.128: max_kernel_error (measured 0.0 on every correct
# layer, 0.13-0.33 on every buggy one; 0.01 leaves room for a bf16 or fp16 dequantize output,
# whose rounding alone measured 1-2e-3 / under 5e-4 on the Zen 4; not measured on a GPU) catches it on
# any model, the layer error names how far off it leaves the layer.
FIDELITY: dict[str, Fidelity] = {
    "int8": Fidelity(max_kl=0.06, min_top1=0.75, max_layer_error=0.03),
    "nf4": Fidelity(max_kl=0.6, min_top1=0.55, max_layer_error=0.14, max_kernel_error=0.01),
    "nf4+dq": Fidelity(max_kl=0.6, min_top1=0.55, max_layer_error=0.14, max_kernel_error=0.01),
    "fp4": Fidelity(max_kl=0.9, min_top1=0.3, max_layer_error=0.19, max_kernel_error=0.01),
    "fp4+dq": Fidelity(max_kl=0.9, min_top1=0.3, max_layer_error=0.19, max_kernel_error=0.01),
}


def fidelity_for(scheme: str) -> Fidelity:
    """The fidelity bounds of a base quantized as ``scheme`` (``nf4``, ``nf4+dq``, ``int8``, ...)."""
    if scheme not in FIDELITY:
        raise KeyError(f"no fidelity bounds for {scheme!r}; the table has {sorted(FIDELITY)}")
    return dataclasses.replace(FIDELITY[scheme], source=f"fidelity[{scheme}]")
