"""The trainable-parameter count a PEFT config implies, and the module matching the strategies draw on."""

from __future__ import annotations

from collections.abc import Iterator

from peft import PeftConfig
from torch import nn

from peftcheck.methods import counts

__all__ = ["expected_trainable_parameters", "matching_modules"]


def matching_modules(model: nn.Module, names: list[str] | str | None) -> Iterator[tuple[str, nn.Module]]:
    """Modules whose dotted name is one of ``names`` or ends with ``"." + name``.

    This is peft's documented rule for a list of ``target_modules``. (peft matches
    ``modules_to_save`` by plain string suffix, so ``"norm"`` would also select
    ``input_layernorm``; the built-in strategies only draw names on which both rules agree.)
    """
    if not names:
        return
    wanted = [names] if isinstance(names, str) else list(names)
    for key, module in model.named_modules():
        if any(key == n or key.endswith("." + n) for n in wanted):
            yield key, module


def expected_trainable_parameters(model: nn.Module, config: PeftConfig) -> int:
    """How many parameters ``get_peft_model(model, config)`` should leave trainable (``model`` is
    the unwrapped base): peftcheck's one count oracle, ``peftcheck.methods.counts`` (issue 13),
    which trainable_ratio uses too. Configs without a formula raise NotImplementedError."""
    try:
        return counts.expected_trainable(model, config)[0]
    except counts.NoFormula as exc:
        raise NotImplementedError(str(exc)) from None
