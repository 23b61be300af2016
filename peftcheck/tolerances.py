"""How far each dtype, quantization and method may stray from the exact adapter contracts.

One table, keyed by (dtype or quantization, peft type), says when two outputs count as equal:
float bases compare raw logits (max and mean absolute difference), 4/8-bit bases compare
distributions (KL divergence and top-1 agreement), because their raw logits are not
comparable after a merge re-quantizes the weights. Suites override single fields. What a
method saves in its checkpoint in place of its live tensors also lives here, so the checks
never branch on a method's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "expected_checkpoint"]


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


# peft keeps DoRA's magnitude as a module (``lora_magnitude_vector.<adapter>.weight``) but saves it
# under the name it had as a ParameterDict, ``lora_magnitude_vector`` (peft/tuners/lora/model.py)
DORA_LIVE_SUFFIX = "lora_magnitude_vector.weight"


def peft_state(peft_model: Any, adapter: str | None = None) -> dict[str, Any]:
    """What peft's ``get_peft_model_state_dict`` saves for ``adapter``, read from the live
    parameters and buffers (every alias of a shared tensor) instead of ``state_dict()``, which
    rewrites 4-bit weights bitsandbytes repacked for the CPU in place (adapter_ops.save)."""
    from peft import get_peft_model_state_dict

    live = dict(peft_model.named_parameters(remove_duplicate=False))
    live.update(peft_model.named_buffers(remove_duplicate=False))
    return get_peft_model_state_dict(peft_model, state_dict=live, adapter_name=adapter or peft_model.active_adapter)


def expected_checkpoint(peft_model: Any, adapter: str | None = None, *, trainable_only: bool = True) -> dict[str, Any]:
    """What an adapter-only checkpoint of ``adapter`` must hold, derived from the live model:
    checkpoint key -> {"shape", "tensor" (live value, or None when only the shape is fixed),
    "from" (the live parameter(s) it stands for)}. ``trainable_only=False`` also covers an
    adapter loaded for inference (its tensors do not require grad).

    - prompt learning saves one table, ``prompt_embeddings``: the virtual tokens the encoder
      produces (the encoder's own MLP/LSTM weights are not saved, by peft's design);
    - budget-allocated ranks (a config ``rank_pattern`` of masks, AdaLoRA) are saved pruned
      to the ranks kept: the rank dimension shrinks to the number of kept ranks;
    - every other trainable tensor is saved under its name without the adapter name (DoRA's
      magnitude also without its ``.weight``);
    - AdapterHub adapters (backend ``adapters``) save every trainable tensor under its own name."""
    import torch

    from peftcheck.methods import is_prompt_learning

    if getattr(peft_model, "peftcheck_backend", None) == "adapters":
        return {
            name: {"shape": tuple(p.shape), "tensor": p.detach().cpu(), "from": [name]}
            for name, p in peft_model.named_parameters() if p.requires_grad or not trainable_only
        }  # fmt: skip
    adapter = adapter or peft_model.active_adapter
    config = peft_model.peft_config[adapter]
    if is_prompt_learning(config):
        with torch.no_grad():
            if config.inference_mode:  # a loaded prompt adapter is its table, with no encoder network
                table = peft_model.prompt_encoder[adapter].embedding.weight.detach().cpu()
            else:
                table = peft_model.get_prompt_embedding_to_save(adapter_name=adapter).detach().cpu()
        sources = [
            n for n, p in peft_model.named_parameters()
            if f".{adapter}." in n and (p.requires_grad or not trainable_only)
        ]  # fmt: skip
        return {"prompt_embeddings": {"shape": tuple(table.shape), "tensor": table, "from": sources}}
    pattern = getattr(config, "rank_pattern", None) or {}
    expected: dict[str, Any] = {}
    # the key peft saves a live tensor under, found by storage: a tensor shared by every layer (VB-LoRA's
    # vector bank, UniLoRA's theta_d, TinyLoRA's v) is saved once under the tuner's name, ShadowPEFT keeps
    # the adapter name in its keys
    saved_as: dict[tuple[int, tuple[int, ...]], str] = {}
    for saved_key, value in peft_state(peft_model, adapter).items():
        if value.numel():
            saved_as.setdefault((value.data_ptr(), tuple(value.shape)), saved_key)
    for name, param in peft_model.named_parameters():
        parts = name.split(".")
        if adapter not in parts or not (param.requires_grad or not trainable_only):
            continue
        key = saved_as.get((param.data_ptr(), tuple(param.shape))) or ".".join(
            p for p in parts if p != adapter
        ).replace("modules_to_save.", "")
        if key.endswith(DORA_LIVE_SUFFIX):  # DoRA's magnitude saves without ".weight" (issue 13)
            key = key.removesuffix(".weight")
        shape, tensor = tuple(param.shape), param.detach().cpu()
        mask = _rank_mask(pattern, key, adapter)
        if mask is not None and len(mask) in shape:
            kept = int(sum(bool(m) for m in mask))
            shape = tuple(kept if size == len(mask) else size for size in shape)
            tensor = None  # values are checked through the reload, not bitwise
        expected[key] = {"shape": shape, "tensor": tensor, "from": [name]}
    return expected


def _rank_mask(pattern: dict[str, Any], key: str, adapter: str) -> list[Any] | None:
    """The kept-rank mask recorded for the module holding checkpoint ``key``, if any.

    AdaLoRA records masks under the name of a module's singular-value vector, e.g.
    ``model.layers.0.self_attn.q_proj.lora_E.default``: the module is that name without the
    adapter and the parameter."""
    for name, mask in pattern.items():
        if not isinstance(mask, (list, tuple)):
            continue  # LoRA's rank_pattern maps modules to plain ranks: live shapes already follow
        module = ".".join(p for p in name.split(".") if p != adapter).rsplit(".", 1)[0]
        if f".{module}." in f".{key}":
            return list(mask)
    return None
