"""The upstream findings behind suites/sweep.yaml's strict xfails, reproduced with plain peft calls
on a random tiny Llama (issue 13).

One test per finding. Each asserts the behaviour peft promises, so it is a strict xfail while the
installed versions match and turns red the day peft fixes it; each also asserts a control that
shows the comparison means something (the adapter changes the output, the same calls are right for
a sibling method or a single adapter). The figures in the docstrings are max |Δlogit| these tests measure
(peft 0.21.2, transformers 5.24.0, torch 2.13 CPU); the suite's own figures are in its xfail reasons.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import tiny_llama
from peftcheck.checks.registry import XfailSpec

_PEFT = {"peft": ">=0.21.2"}  # seen on 0.21.2, still on 0.22.0 (issue 24)
_FIXED_IN_022 = {"peft": ">=0.21.2,<0.22.0"}  # seen on 0.21.2, passes on 0.22.0 (issue 24)


def _xfail(spec: XfailSpec, raises: type[BaseException] = AssertionError) -> pytest.MarkDecorator:
    return spec.mark(raises)


RSLORA_CAT = XfailSpec(
    reason="upstream (peft 0.21.2): add_weighted_adapter(combination_type='cat') keeps use_rslora, "
    "so the combined rsLoRA adapter is scaled by sqrt(new_rank) instead of 1",
    when=_FIXED_IN_022,
)
C3A_TWO_ACTIVE = XfailSpec(
    reason="upstream (peft 0.21.2): C3ALinear.forward feeds the second active adapter the first one's "
    "output (a wrong sum on square layers, a shape error on the others)",
    when=_PEFT,
)
OFT_MERGE_ORDER = XfailSpec(
    reason="upstream (peft 0.21.2): merging two active OFT adapters composes their rotations in the "
    "reverse order of the forward",
    when=_FIXED_IN_022,
)
OSF_TWO_ACTIVE = XfailSpec(
    reason="upstream (peft 0.21.2): with two active OSF adapters the forward silently runs only the "
    "first, while merge_adapter folds in both",
    when=_PEFT,
)
FROZEN_LOAD = XfailSpec(
    reason="upstream (peft 0.21.2): from_pretrained(is_trainable=False) leaves adaption prompt's "
    "prompt and gate and CPT's delta embedding trainable",
    when=_FIXED_IN_022,
)
SHADOW_FROZEN_LOAD = XfailSpec(
    reason="upstream (peft 0.21.2, 0.22.0): from_pretrained(is_trainable=False) leaves ShadowPEFT's "
    "backbone trainable",
    when=_PEFT,
)
SHARED_SAVED_TWICE = XfailSpec(
    reason="upstream (peft 0.21.2): RandLoRA saves its shared random bases once per target layer "
    "(and at model level)",
    when=_FIXED_IN_022,
)
LILY_SAVED_TWICE = XfailSpec(
    reason="upstream (peft 0.21.2, 0.22.0): Lily saves its cross-layer shared lily_B once per layer",
    when=_PEFT,
)
CARTRIDGE_GENERATE = XfailSpec(
    reason="upstream (peft 0.21.2, transformers 5.24.0): generate() drops the cartridge handed over as "
    "past_key_values when it passes its own cache, and generates as the base",
    when={"peft": ">=0.21.2,<0.22.0", "transformers": ">=5.24.0"},
)
XLORA_ADAPTER_NAMES = XfailSpec(
    reason="upstream (peft 0.21.2): X-LoRA loads its experts as '0', '1', ... and then looks them up "
    "by the config's names: KeyError at the first forward for any other names",
    when=_PEFT,
)

IDS = torch.tensor([[5, 17, 42, 9, 77, 3, 64, 21], [8, 1, 99, 12, 40, 7, 2, 115]])


def _logits(model: Any, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _apart(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _two_adapters(config: Any) -> Any:
    """A peft model with adapters "one" and "two" of ``config`` (seeded), both active."""
    from peft import get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(), config, adapter_name="one")
    model.add_adapter("two", config)
    model.base_model.set_adapter(["one", "two"])
    return model


def _weighted_cat_apart(use_rslora: bool) -> tuple[float, float]:
    """(max |cat adapter - both active|, max |both active - base|) for two random LoRA adapters."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        use_rslora=use_rslora)  # fmt: skip
    model = _two_adapters(config)
    both = _logits(model)
    with model.disable_adapter():
        base = _logits(model)
    model.add_weighted_adapter(["one", "two"], [1.0, 1.0], "cat", combination_type="cat")
    model.set_adapter("cat")
    return _apart(_logits(model), both), _apart(both, base)


@_xfail(RSLORA_CAT)
def test_a_weighted_cat_of_rslora_adapters_equals_both_active() -> None:
    """rsLoRA: cat vs both active 0.18 (its delta is sqrt(r=8) = 2.83x theirs); plain LoRA 1.9e-07."""
    plain, effect = _weighted_cat_apart(use_rslora=False)
    assert effect > 0.1 and plain < 1e-4  # the control: plain LoRA's cat is exact
    rslora, _ = _weighted_cat_apart(use_rslora=True)
    assert rslora < 1e-4


@_xfail(C3A_TWO_ACTIVE)
def test_two_active_c3a_adapters_add_their_deltas() -> None:
    """q_proj 64->64: both active vs Δ1 + Δ2 0.050 (silently wrong); v_proj 64->32 raises a shape error."""
    from peft import C3AConfig

    model = _two_adapters(C3AConfig(target_modules=["q_proj", "v_proj"], block_size=16))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    h = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = layer.base_layer(h)
        deltas = []
        for name in ("one", "two"):
            model.base_model.set_adapter([name])
            deltas.append(layer(h) - base)
        model.base_model.set_adapter(["one", "two"])
        together = layer(h) - base
    assert min(float(d.abs().max()) for d in deltas) > 1e-3  # the control: each adapter moves q_proj
    assert _apart(together, deltas[0] + deltas[1]) < 1e-5
    _logits(model)  # v_proj (64 -> 32) with both active: "shape ... is invalid" on peft 0.21.2


@_xfail(OFT_MERGE_ORDER)
def test_merging_two_active_oft_adapters_gives_their_unmerged_output() -> None:
    """one adapter merged vs unmerged < 1e-4; two adapters 0.24 (merged in the reverse order they agree)."""
    from peft import OFTConfig

    model = _two_adapters(OFTConfig(target_modules=["q_proj", "v_proj"], r=0, oft_block_size=4, init_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "oft_R" in name:
                param.normal_(0, 0.3)  # clearly non-trivial rotations
    single = copy.deepcopy(model)
    single.base_model.set_adapter(["one"])
    one = _logits(single)
    single.merge_adapter()
    assert _apart(_logits(single), one) < 1e-4  # the control: one adapter merges exactly
    both = _logits(model)
    assert _apart(both, one) > 0.1  # the second adapter changes the output
    model.merge_adapter()
    assert _apart(_logits(model), both) < 1e-4


@_xfail(OSF_TWO_ACTIVE)
def test_two_active_osf_adapters_both_run(tmp_path: Path) -> None:
    """one adapter vs base 0.21; both active vs the first alone 0 (the second does nothing); merged vs both 0.18."""
    from peft import OSFConfig, PeftModel, get_peft_model

    model = get_peft_model(tiny_llama(), OSFConfig(target_modules=["q_proj", "v_proj"]))
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # "trained": away from its init
                param.add_(torch.randn(param.shape, generator=noise) * 0.05)
    with model.disable_adapter():
        base = _logits(model)
    one = _logits(model)
    model.save_pretrained(tmp_path)
    both_model = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    both_model.load_adapter(str(tmp_path), adapter_name="second")
    both_model.base_model.set_adapter(["default", "second"])
    both = _logits(both_model)
    assert _apart(one, base) > 0.05  # the control: one adapter changes the output
    assert _apart(both, one) > 1e-3  # the same delta twice is not the delta once
    both_model.merge_adapter()
    assert _apart(_logits(both_model), both) < 1e-4


def _frozen_load_config(method: str) -> Any:
    from peft import AdaptionPromptConfig, CPTConfig, ShadowConfig

    if method == "adaption_prompt":
        return AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=1)
    if method == "shadow":
        return ShadowConfig(task_type="CAUSAL_LM", r=4)
    return CPTConfig(task_type="CAUSAL_LM", cpt_token_ids=[1, 2, 3, 4], cpt_mask=[1, 1, 1, 1],
                     cpt_tokens_type_mask=[1, 2, 3, 4])  # fmt: skip


@pytest.mark.parametrize("method", [
    pytest.param("adaption_prompt", marks=_xfail(FROZEN_LOAD)),
    pytest.param("shadow", marks=_xfail(SHADOW_FROZEN_LOAD)),
    pytest.param("cpt", marks=_xfail(FROZEN_LOAD)),
])
def test_a_frozen_load_trains_nothing(method: str, tmp_path: Path) -> None:
    """Trainable after is_trainable=False: adaption prompt 257, Shadow 37,056 (10 tensors), CPT 256."""
    from peft import PeftModel, get_peft_model

    model = get_peft_model(tiny_llama(), _frozen_load_config(method)).eval()
    assert any(p.requires_grad for p in model.parameters())  # the control: there is something to freeze
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=False)
    assert loaded.peft_config["default"].inference_mode
    assert _apart(_logits(loaded), _logits(model)) < 1e-5  # it loaded the adapter
    assert [(n, p.numel()) for n, p in loaded.named_parameters() if p.requires_grad] == []


def _saved_more_than_once(config: Any) -> list[list[str]]:
    """Keys of the checkpoint state dict that hold the same live tensor as another key."""
    from peft import get_peft_model, get_peft_model_state_dict

    model = get_peft_model(tiny_llama(), config)
    keys: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in get_peft_model_state_dict(model).items():
        keys.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    return [group for group in keys.values() if len(group) > 1]


@pytest.mark.parametrize("method", [
    pytest.param("randlora", marks=_xfail(SHARED_SAVED_TWICE)),
    pytest.param("lily", marks=_xfail(LILY_SAVED_TWICE)),
])
def test_a_checkpoint_saves_each_shared_tensor_once(method: str) -> None:
    """RandLoRA: 2 live tensors under 5 keys each (100,264 B, 9.1x its 11,008 trainable bytes); Lily: 2 under 2 each."""
    from peft import LilyConfig, RandLoraConfig, VeraConfig

    # the control: VeRA's layers share their projections the same way, and peft saves them once
    assert _saved_more_than_once(VeraConfig(r=4, target_modules=["q_proj", "v_proj"])) == []
    config = (RandLoraConfig if method == "randlora" else LilyConfig)(r=4, target_modules=["q_proj", "v_proj"])
    assert _saved_more_than_once(config) == []


@_xfail(CARTRIDGE_GENERATE)
def test_a_cartridge_generates_from_its_forward_pass() -> None:
    """cartridge forward vs base 0.48; first generated step vs that forward 0.48, vs the base's 1.5e-07."""
    from peft import CartridgeConfig, get_peft_model

    base = tiny_llama()
    model = get_peft_model(tiny_llama(), CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # a trained cartridge: far from its init
                param.normal_(0, 1.0)
    model.eval()
    ids = IDS[:1, :4]
    forward = _logits(model, ids)[0, -1]
    assert _apart(forward, _logits(base, ids)[0, -1]) > 0.1  # the control: the cartridge changes the forward
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    assert _apart(out.logits[0][0], forward) < 1e-4


def _xlora_forward(names: tuple[str, str], tmp_path: Path) -> float:
    """max |X-LoRA (experts saved under ``names``) - base|; raises what the forward raises."""
    from peft import LoraConfig, XLoraConfig, get_peft_model

    experts = {}
    for i, name in enumerate(names):
        torch.manual_seed(10 + i)
        lora = get_peft_model(tiny_llama(use_cache=False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))  # fmt: skip
        lora.save_pretrained(tmp_path / name)
        experts[name] = str(tmp_path / name)
    base = tiny_llama(use_cache=False)
    config = XLoraConfig(task_type="CAUSAL_LM", hidden_size=64, adapters=experts)
    model = get_peft_model(tiny_llama(use_cache=False), config)
    return _apart(_logits(model), _logits(base))


@_xfail(XLORA_ADAPTER_NAMES, raises=KeyError)
def test_xlora_takes_any_adapter_names(tmp_path: Path) -> None:
    """experts named "0", "1": the forward runs; "math", "code": KeyError 'math' in disable_adapter_layers."""
    assert _xlora_forward(("0", "1"), tmp_path) > 1e-3  # the control: the same experts under peft's names
    _xlora_forward(("math", "code"), tmp_path)
