"""Model footprint: bytes of parameters, buffers and quantization state, by dtype."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["Footprint", "footprint", "quantized_weights", "float_weight", "QUANTIZED_BITS"]

MIB = 2**20
# Bits per weight element that a bitsandbytes quantization should store (without its scales).
QUANTIZED_BITS = {"nf4": 4, "fp4": 4, "int8": 8}


@dataclasses.dataclass
class Footprint:
    """Bytes a model holds; ``total`` counts quantization scales too (``get_memory_footprint`` does not)."""

    params_bytes: int
    buffers_bytes: int
    quant_state_bytes: int
    by_dtype: dict[str, int]
    reported_bytes: int | None  # transformers' get_memory_footprint(), where the model has it

    @property
    def total(self) -> int:
        return self.params_bytes + self.buffers_bytes + self.quant_state_bytes

    @property
    def total_mib(self) -> float:
        return self.total / MIB

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_mib": self.total_mib,
            "params_mib": self.params_bytes / MIB,
            "buffers_mib": self.buffers_bytes / MIB,
            "quant_state_mib": self.quant_state_bytes / MIB,
            "get_memory_footprint_mib": None if self.reported_bytes is None else self.reported_bytes / MIB,
            "by_dtype_mib": {k: v / MIB for k, v in sorted(self.by_dtype.items())},
        }


def _nbytes(tensor: Any) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


def _quant_state_tensors(param: Any) -> list[Any]:
    """The scale tensors bitsandbytes keeps next to a quantized weight (absmax, SCB, ...)."""
    import torch

    found: list[Any] = []
    state = getattr(param, "quant_state", None)
    while state is not None:  # a 4-bit weight; double quantization nests a second state
        found += [t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor)]
        state = state.state2
    scb = getattr(param, "SCB", None)  # an 8-bit weight's row scales
    if isinstance(scb, torch.Tensor):
        found.append(scb)
    return found


def footprint(model: Any) -> Footprint:
    """Every distinct storage of ``model`` counted once (tied weights, shared code books)."""
    seen: set[int] = set()
    by_dtype: dict[str, int] = {}
    sums = {"params": 0, "buffers": 0, "quant": 0}

    def add(tensor: Any, kind: str) -> None:
        if tensor.device.type == "meta" or tensor.numel() == 0:
            return
        key = tensor.data_ptr()
        if key in seen:
            return
        seen.add(key)
        size = _nbytes(tensor)
        sums[kind] += size
        name = str(tensor.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + size

    for param in model.parameters():
        add(param, "params")
        for tensor in _quant_state_tensors(param):
            add(tensor, "quant")
    for buffer in model.buffers():
        add(buffer, "buffers")
    reported = getattr(model, "get_memory_footprint", None)
    return Footprint(sums["params"], sums["buffers"], sums["quant"], by_dtype, reported() if callable(reported) else None)


def quantized_weights(model: Any) -> dict[str, dict[str, Any]]:
    """Weight name -> {bits, bytes, elements} for every bitsandbytes-quantized weight."""
    out = {}
    for name, param in model.named_parameters():
        kind = type(param).__name__
        if kind not in ("Params4bit", "Int8Params"):
            continue
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        elements = int(shape.numel()) if shape is not None else int(param.numel())
        stored = _nbytes(param) + sum(_nbytes(t) for t in _quant_state_tensors(param))
        out[name] = {"bits": 8 * _nbytes(param) / elements, "bytes": stored, "elements": elements}
    return out


def float_weight(module: Any, param: Any) -> Any:
    """A parameter as a float32 CPU tensor; bitsandbytes 4-bit and 8-bit weights dequantized."""
    kind = type(param).__name__
    if kind == "Params4bit":
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(param.data, param.quant_state).float().cpu()
    if kind == "Int8Params":
        import bitsandbytes as bnb

        scb = getattr(param, "SCB", None)
        if scb is None:
            scb = getattr(getattr(module, "state", None), "SCB", None)
        return bnb.functional.int8_vectorwise_dequant(param.data, scb).float().cpu()
    return param.detach().float().cpu()
