"""Counterexamples the properties found in peft 0.21.2 (torch 2.13.0), kept as regression tests.

Each is a property over drawn MLPs with the minimal counterexample pinned by ``@example``, and
is a strict xfail from peft 0.21.2 on, open until a fixed release is seen (issue 24): once peft
fixes it the test passes, the strict xfail fails naming the version, and the range closes there
(and the matching precondition in test_state_machine.py goes).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model

from peftcheck import strategies as ps
from peftcheck.checks.registry import XfailSpec

MINIMAL = ps.mlp_recipe((4, 4, 4))  # one hidden Linear ("hidden.0") and the "head"
seeds = st.integers(0, 2**16)


def _finding(reason: str, raises: type[BaseException] | None = None, when: str = ">=0.21.2") -> pytest.MarkDecorator:
    return XfailSpec(reason=reason, when={"peft": when}).mark(raises)


def _lora(targets: list[str], *, dropout: float = 0.0) -> LoraConfig:
    return LoraConfig(r=2, target_modules=targets, init_lora_weights=False, lora_dropout=dropout)


def _model(base: ps.TinyModel, seed: int, adapters: dict[str, list[str]], **kw: float) -> PeftModel:
    """``base`` with one perturbed LoRA adapter per entry, put in eval() mode before the others
    are added (as a user serving several adapters would); the first is active."""
    (first, targets), *rest = adapters.items()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = get_peft_model(base.build(), _lora(targets, **kw), adapter_name=first).eval()
        for name, more in rest:
            model.add_adapter(name, _lora(more, **kw))
    for i, name in enumerate(adapters):
        ps.perturb_adapter(model, name, seed=seed + i)
    return model


def _batch(base: ps.TinyModel, seed: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(3, base.input_size, generator=torch.Generator().manual_seed(seed))}


@_finding(
    "upstream (peft 0.21.2): deleting the active adapter lets every layer pick its own first "
    "remaining adapter, so layers run different adapters than model.active_adapter reports",
)
@given(ps.mlps(), seeds)
@example(MINIMAL, 0)  # one on [hidden.0, head]; two on [hidden.0]; three on [head]
def test_delete_active_adapter_runs_the_reported_adapter(base: ps.TinyModel, seed: int) -> None:
    first, second = base.linear_names[:2]
    model = _model(base, seed, {"one": [first, second], "two": [first], "three": [second]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.delete_adapter("one")
        after_delete = ps.model_output(model, _batch(base, seed))
        model.set_adapter(model.active_adapter)  # what the model says is active, on every layer
    reported = ps.model_output(model, _batch(base, seed))
    assert torch.equal(after_delete, reported), (
        f"after delete_adapter the model reports {model.active_adapter!r} but computes something else"
    )


@_finding(
    "upstream (peft 0.21.2): deleting the active adapter when the first adapter layer has no other "
    "adapter leaves model.active_adapter naming the deleted one; forward raises KeyError",
    raises=KeyError,
)
@given(ps.mlps(), seeds)
@example(MINIMAL, 0)  # one on [hidden.0, head] (active); two on [head]; delete one
def test_delete_active_adapter_leaves_a_usable_model(base: ps.TinyModel, seed: int) -> None:
    first, second = base.linear_names[:2]
    model = _model(base, seed, {"one": [first, second], "two": [second]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.delete_adapter("one")
    ps.model_output(model, _batch(base, seed))
    assert model.active_adapter == "two"


@_finding(
    "upstream (peft 0.21.2): after deleting the only adapter, PeftModel.forward looks up the "
    "deleted adapter's config and raises KeyError instead of running the base",
    raises=KeyError,
)
@given(ps.mlps(), seeds)
@example(MINIMAL, 0)
def test_forward_after_deleting_the_only_adapter(base: ps.TinyModel, seed: int) -> None:
    model = _model(base, seed, {"one": [base.linear_names[0]]})
    model.delete_adapter("one")
    out = ps.model_output(model, _batch(base, seed))
    assert torch.equal(out, ps.model_output(base.build(), _batch(base, seed)))


@_finding(
    "upstream (peft 0.21.2): add_adapter on a model in eval() mode creates the new adapter's "
    "lora_dropout in training mode, so inference with that adapter is random",
    when=">=0.21.2,<0.22.0",  # passes on 0.22.0
)
@given(ps.mlps(), seeds)
@example(MINIMAL, 0)
def test_add_adapter_on_an_eval_model_is_deterministic(base: ps.TinyModel, seed: int) -> None:
    model = _model(base, seed, {"one": [base.linear_names[0]], "two": [base.linear_names[0]]}, dropout=0.5)
    model.set_adapter("two")
    batch = _batch(base, seed)
    assert not model.training
    first, *others = (ps.model_output(model, batch) for _ in range(4))
    assert all(torch.equal(first, other) for other in others), "forward passes of an eval() model differ"


@_finding(
    "upstream (peft 0.21.2): add_adapter while adapters are disabled wraps new layers enabled; after "
    "set_adapter the 'disabled' model applies the new adapter there (status 'irregular')",
)
@given(ps.mlps(), seeds)
@example(MINIMAL, 0)  # one on [hidden.0]; disable; add two on [head]; set two
def test_add_adapter_while_disabled_stays_disabled(base: ps.TinyModel, seed: int) -> None:
    first, second = base.linear_names[:2]
    batch = _batch(base, seed)
    base_out = ps.model_output(base.build(), batch)
    model = _model(base, seed, {"one": [first]})
    assert not torch.equal(ps.model_output(model, batch), base_out), "adapter one changes nothing"
    model.base_model.disable_adapter_layers()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model.add_adapter("two", _lora([second]))
    ps.perturb_adapter(model, "two", seed=seed)
    model.set_adapter("two")
    assert torch.equal(ps.model_output(model, batch), base_out), "a disabled model applies an adapter"
