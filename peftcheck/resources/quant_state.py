"""What a bitsandbytes-quantized layer computes with (issue 27): its codes and scales read by
value, never the bytes' layout, and each layer's dequantization error against its float weight.
Here, outside ``checks/``, since the checks import no adapter library (only this module reads
bitsandbytes' state, lazily, for models that hold quantized weights)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "LayerState", "is_quantized", "layer_readers", "layer_states", "differences", "state_changes", "scheme_of",
    "layer_errors",
]  # fmt: skip

_KINDS = {"Params4bit": "4bit", "Int8Params": "8bit"}


def is_quantized(param: Any) -> bool:
    """Whether ``param`` is a bitsandbytes 4-bit or 8-bit weight (by type name: no import)."""
    return type(param).__name__ in _KINDS and (type(param).__name__ != "Int8Params" or str(param.dtype) == "torch.int8")


@dataclasses.dataclass(frozen=True)
class LayerState:
    """What one quantized weight computes with, independent of how bitsandbytes lays it out.

    4-bit: the codes in bitsandbytes' standard layout (two per byte, high nibble first, row-major
    order of ``shape``), the absmax of each ``blocksize`` consecutive elements (nested
    double-quantized scales dequantized), the code book, and the nested state itself where the
    layout still holds it. 8-bit: the int8 codes and the row scales SCB. ``scale_dtype`` is bfloat16
    for a weight bitsandbytes repacked for its AVX512-BF16 CPU kernel (bnb_cpu_packed): that layout
    keeps the scales in bf16 only. Tensors are copies: a reading stays what it read."""

    kind: str
    shape: tuple[int, ...]
    codes: Any
    scales: Any
    quant_type: str
    blocksize: int | None = None
    code: Any = None
    nested: dict[str, Any] | None = None
    scale_dtype: str = "float32"

    @property
    def repacked(self) -> bool:
        return self.scale_dtype == "bfloat16"

    def reference(self) -> Any:
        """The 4-bit weight rebuilt from the codes and scales alone: code book entry times the
        absmax of its flat block of ``blocksize`` elements, the scalar kernel's arithmetic."""
        import math

        n = math.prod(self.shape)
        codes = _nibbles(self.codes, n).long()
        scales = self.scales.float().repeat_interleave(self.blocksize)[:n]
        return (self.code.float()[codes] * scales).reshape(self.shape)


def _nibbles(data: Any, n: int) -> Any:
    """Code indices of bitsandbytes' standard 4-bit layout: high nibble first, then low."""
    import torch

    flat = data.reshape(-1).view(torch.uint8)
    codes = torch.empty(flat.numel() * 2, dtype=torch.uint8, device=flat.device)
    codes[0::2], codes[1::2] = flat >> 4, flat & 0xF
    return codes[:n]


def _four_bit(param: Any, module: Any) -> LayerState:
    import bitsandbytes.functional as F
    import torch

    state = param.quant_state if param.quant_state is not None else getattr(module, "quant_state", None)
    shape = tuple(int(s) for s in state.shape)
    if getattr(state, "packing_format_for_cpu", False):
        # the AVX512-BF16 layout: undone on a shallow copy (the inverse reassigns the state's fields)
        inverse = getattr(F, "_convert_weight_packed_for_cpu_inverse", None)
        if inverse is None:  # our bug: a bitsandbytes with the layout but without its inverse
            raise AssertionError("bitsandbytes repacked a 4-bit weight and has no _convert_weight_packed_for_cpu_inverse")
        data, _ = inverse(param.data.clone(), copy.copy(state))
        # the layout keeps absmax as [in/blocksize, out] in bf16: back to flat block order
        scales = state.absmax.T.reshape(-1).float()
        return LayerState("4bit", shape, data.reshape(-1).view(torch.uint8).clone(), scales, state.quant_type,
                          state.blocksize, state.code.clone(), None, "bfloat16")  # fmt: skip
    nested = None
    if state.nested:
        scales = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
        nested = {"absmax": state.absmax.clone(), "state2.absmax": state.state2.absmax.clone(),
                  "state2.code": state.state2.code.clone(), "offset": _copy(state.offset),
                  "state2.blocksize": state.state2.blocksize}  # fmt: skip
    else:
        scales = state.absmax.float().clone()
    return LayerState("4bit", shape, param.data.reshape(-1).view(torch.uint8).clone(), scales, state.quant_type,
                      state.blocksize, state.code.clone(), nested)  # fmt: skip


def _copy(value: Any) -> Any:
    return value.clone() if hasattr(value, "clone") else value


def _eight_bit(param: Any, module: Any) -> LayerState:
    # SCB sits on the weight until the first forward moves it to the layer's state: a layout
    scb = getattr(param, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return LayerState("8bit", tuple(param.shape), param.data.clone(), None if scb is None else scb.clone(), "int8")


def _quantized_modules(model: Any) -> Iterator[tuple[str, Any, Any]]:
    for module_name, module in model.named_modules():
        param = module._parameters.get("weight")
        if param is not None and is_quantized(param):
            yield f"{module_name}.weight" if module_name else "weight", module, param


def layer_readers(model: Any, *, rename: Callable[[str], str] = lambda name: name) -> dict[str, Callable[[], LayerState]]:
    """Weight name (through ``rename``) -> a function reading its LayerState, for every
    bitsandbytes-quantized weight: one layer's copy at a time (a 6.7B base's codes are gigabytes)."""
    readers = {}
    for name, module, param in _quantized_modules(model):
        read = _four_bit if _KINDS[type(param).__name__] == "4bit" else _eight_bit
        readers[rename(name)] = functools.partial(read, param, module)
    return readers


def layer_states(model: Any, *, rename: Callable[[str], str] = lambda name: name) -> dict[str, LayerState]:
    """Weight name (through ``rename``) -> LayerState for every bitsandbytes-quantized weight."""
    return {name: read() for name, read in layer_readers(model, rename=rename).items()}


def _count(a: Any, b: Any) -> int:
    """Elements that differ, counted where ``a`` lives (a GPU base's codes stay on the GPU)."""
    return int((a.reshape(-1) != b.reshape(-1).to(a.device)).sum())


def differences(before: LayerState, after: LayerState) -> list[str]:
    """What changed between two states of one weight, by value; empty if it computes the same."""
    import torch

    if before.kind != after.kind:
        return [f"{before.kind} weight became {after.kind}"]
    found = [f"{field} {getattr(before, field)} -> {getattr(after, field)}"
             for field in ("shape", "quant_type", "blocksize") if getattr(before, field) != getattr(after, field)]  # fmt: skip
    if found:
        return found
    if before.code is not None and not torch.equal(before.code.cpu(), after.code.cpu()):
        found.append("the code book changed")
    unit = "bytes (2 codes each)" if before.kind == "4bit" else "codes"
    if before.codes.numel() != after.codes.numel():
        found.append(f"codes: {before.codes.numel()} -> {after.codes.numel()} {unit}")
    elif n := _count(before.codes, after.codes):
        found.append(f"codes: {n} of {before.codes.numel()} {unit} differ")
    name = "absmax" if before.kind == "4bit" else "SCB"
    if before.scales is None or after.scales is None or before.scales.numel() != after.scales.numel():
        return [*found, f"{name}: {None if before.scales is None else before.scales.numel()} -> "
                        f"{None if after.scales is None else after.scales.numel()} scales"]  # fmt: skip
    # a repacked layout holds bf16 scales: the values it keeps are the originals rounded to bf16
    precision = torch.bfloat16 if before.repacked or after.repacked else torch.float32
    a, b = before.scales.float().to(precision), after.scales.float().to(precision)
    if n := _count(a, b):
        rel = float(((b.float() - a.float()).abs() / a.float().abs().clamp_min(1e-30)).max())
        at = " (compared in bfloat16, the repacked layout's precision)" if precision == torch.bfloat16 else ""
        found.append(f"{name}: {n} of {a.numel()} scales differ, up to {rel:.3g} relative{at}")
    if before.nested is not None and after.nested is not None:
        for key, value in before.nested.items():
            other = after.nested[key]
            same = value == other if not isinstance(value, torch.Tensor) else torch.equal(value.cpu(), other.cpu())
            if not same:
                found.append(f"double-quantization state {key} changed")
    elif (before.nested is None) != (after.nested is None) and not (before.repacked or after.repacked):
        found.append(f"double quantization {'off -> on' if before.nested is None else 'on -> off'}")
    return found


def state_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(weight -> what changed, weights missing) between two readings: ``layer_states`` or
    ``layer_readers`` (read a pair at a time)."""
    changed, missing = {}, []
    for name, state in before.items():
        if name not in after:
            missing.append(name)
        elif found := differences(_read(state), _read(after[name])):
            changed[name] = "; ".join(found)
    return changed, missing


def _read(state: Any) -> LayerState:
    return state if isinstance(state, LayerState) else state()


def scheme_of(model: Any) -> str | None:
    """``int8``, ``nf4``, ``fp4``, or ``nf4+dq`` / ``fp4+dq`` (double quantization), as the
    model's layers hold them; None for a model without quantized weights."""
    kinds = set()
    for _, module, param in _quantized_modules(model):
        if _KINDS[type(param).__name__] == "8bit":
            kinds.add("int8")
            continue
        state = param.quant_state if param.quant_state is not None else module.quant_state
        kinds.add(state.quant_type + ("+dq" if state.nested else ""))
    assert len(kinds) <= 1, f"one base, several quantization schemes: {sorted(kinds)}"
    return next(iter(kinds), None)


def _library_dequantized(model: Any, name: str, state: LayerState) -> Any:
    """The weight as bitsandbytes itself dequantizes it (the kernel under test), float32."""
    import bitsandbytes.functional as F

    module = model.get_submodule(name.removesuffix(".weight"))
    param = module.weight
    if state.kind == "8bit":
        return F.int8_vectorwise_dequant(state.codes, state.scales).float()
    qs = param.quant_state if param.quant_state is not None else module.quant_state
    assert not getattr(qs, "packing_format_for_cpu", False), f"{name}: dequantize a copy that was never repacked"
    return F.dequantize_4bit(param.data, qs).float()


def layer_errors(quantized: Any, float_model: Any) -> dict[str, dict[str, float]]:
    """Weight -> {error: ||dequantize(W_q) - W|| / ||W||, and for 4-bit weights reference: the
    same for the codes and scales rebuilt as flat blocks, kernel: dequantize vs that rebuild}."""
    import torch

    norm = torch.linalg.vector_norm
    errors = {}
    for name, read in layer_readers(quantized).items():
        state = read()
        weight = float_model.get_parameter(name).detach().float()
        dequantized = _library_dequantized(quantized, name, state).reshape(weight.shape)
        scale = norm(weight).clamp_min(1e-30)
        row = {"error": float(norm(dequantized - weight) / scale)}
        if state.kind == "4bit":
            rebuilt = state.reference().reshape(weight.shape).to(dequantized.device)
            row["reference"] = float(norm(rebuilt - weight) / scale)
            row["kernel"] = float(norm(dequantized - rebuilt) / norm(rebuilt).clamp_min(1e-30))
        errors[name] = row
    return errors
