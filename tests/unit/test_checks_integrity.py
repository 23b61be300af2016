"""adapter_integrity passes on folders peft's own save_pretrained writes and fails, naming the
defect, on each one planted in a copy (issue 15): a dropped tensor, all-zero B, a NaN, an empty
tensor, a config whose r or target_modules disagree with the weights, a merged folder that is not
the adapter merged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import load, quiet_pipeline, run_check, tiny_suite
from peftcheck.errors import PeftcheckError

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
VARIANTS = {"lora": {}, "dora": {"use_dora": True}, "rslora": {"use_rslora": True}}


def _tiny_llama_base() -> Any:
    """The built-in tiny-llama the suites load (tests/helpers.tiny_llama has another vocabulary)."""
    from transformers import AutoModelForCausalLM

    from peftcheck.fixtures import materialise

    return AutoModelForCausalLM.from_pretrained(materialise("tiny-llama"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LoRA-family folders by peft's save_pretrained (B initialised random: a trained-looking
    adapter without training), and lora merged into a full model."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, extra in VARIANTS.items():
        torch.manual_seed(0)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                            task_type="CAUSAL_LM", **extra)  # fmt: skip
        model = get_peft_model(_tiny_llama_base(), config)
        model.save_pretrained(root / name)
        out[name] = root / name
        if name == "lora":
            model.merge_and_unload().save_pretrained(root / "merged")
            _tiny_llama_base().save_pretrained(root / "not_merged")  # the base alone, as a wrong export
    return out


def _planted(source: Path, tmp_path: Path, *, tensors: Callable[[dict[str, Any]], None] | None = None,
             config: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """A copy of ``source`` with its tensors edited in place by ``tensors`` and its config updated."""
    folder = tmp_path / "planted"
    shutil.copytree(source, folder)
    if tensors is not None:
        state = load_file(str(folder / WEIGHTS))
        tensors(state)
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    if config is not None:
        data = json.loads((folder / CONFIG).read_text())
        data.update(config)
        (folder / CONFIG).write_text(json.dumps(data))
    return folder


def _integrity(folder: Path, **method: Any) -> Any:
    loaded = load(tiny_suite({"mine": {"adapter": str(folder), **method}}, model="tiny-llama"))
    pipeline = quiet_pipeline()
    return run_check(pipeline, loaded, "mine", "adapter_integrity"), pipeline, loaded


def _key(state: dict[str, Any], part: str) -> str:
    return sorted(k for k in state if part in k)[-1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_folder_save_pretrained_wrote_passes(folders: dict[str, Path], variant: str) -> None:
    measurement, _, _ = _integrity(folders[variant])
    assert measurement.passed, measurement.message
    assert measurement.details["tensors"] == measurement.details["tensors_expected"] == (12 if variant == "dora" else 8)


def test_a_dropped_tensor_fails_naming_it(folders: dict[str, Path], tmp_path: Path) -> None:
    dropped = {}

    def drop(state: dict[str, Any]) -> None:
        dropped["key"] = _key(state, "lora_B")
        del state[dropped["key"]]

    measurement, pipeline, loaded = _integrity(_planted(folders["lora"], tmp_path, tensors=drop))
    assert not measurement.passed
    assert "1 tensor(s) the config implies are missing from the file" in measurement.message
    assert dropped["key"] in measurement.message
    # peft itself only warns (peft#2699); the other items still run on the adapter it loads
    assert pipeline.artifact(loaded, "mine").record["trainable_params"] > 0


def test_all_zero_b_fails_as_an_untrained_or_zero3_adapter(folders: dict[str, Path], tmp_path: Path) -> None:
    def zero(state: dict[str, Any]) -> None:
        for key in state:
            if "lora_B" in key:
                state[key] = torch.zeros_like(state[key])

    measurement, _, _ = _integrity(_planted(folders["lora"], tmp_path, tensors=zero))
    assert not measurement.passed
    assert "4 all-zero tensor(s)" in measurement.message and "ZeRO-3" in measurement.message
    assert all("lora_B" in key for key in measurement.details["all-zero"])


def test_a_nan_fails(folders: dict[str, Path], tmp_path: Path) -> None:
    def nan(state: dict[str, Any]) -> None:
        state[_key(state, "lora_A")].view(-1)[3] = float("nan")

    measurement, _, _ = _integrity(_planted(folders["rslora"], tmp_path, tensors=nan))
    assert not measurement.passed and "1 NaN tensor(s)" in measurement.message


def test_an_empty_tensor_fails(folders: dict[str, Path], tmp_path: Path) -> None:
    def empty(state: dict[str, Any]) -> None:
        state[_key(state, "lora_A")] = torch.empty(0)

    measurement, _, _ = _integrity(_planted(folders["lora"], tmp_path, tensors=empty))
    assert not measurement.passed and "1 empty tensor(s)" in measurement.message


def test_a_config_whose_r_disagrees_with_the_weights_fails_and_the_method_does_not_load(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    measurement, pipeline, loaded = _integrity(_planted(folders["dora"], tmp_path, config={"r": 4}))
    assert not measurement.passed
    assert "with another shape than the config and the model imply" in measurement.message
    assert "the weights have rank [8], adapter_config.json says r=4" in measurement.message
    with pytest.raises(PeftcheckError, match=r"methods\.mine\.adapter: peft cannot load .*size mismatch"):
        pipeline.artifact(loaded, "mine")  # every other item: one line, no traceback


def test_a_config_whose_target_modules_disagree_with_the_weights_fails(folders: dict[str, Path], tmp_path: Path) -> None:
    planted = _planted(folders["lora"], tmp_path, config={"target_modules": ["q_proj", "k_proj"]})
    measurement, _, _ = _integrity(planted)
    assert not measurement.passed
    assert "tensor(s) the config implies are missing from the file (modules ['k_proj'])" in measurement.message
    assert "in the file the config does not imply (modules ['v_proj']; target_modules:" in measurement.message


def test_a_target_module_matching_nothing_fails(folders: dict[str, Path], tmp_path: Path) -> None:
    planted = _planted(folders["lora"], tmp_path, config={"target_modules": ["q_proj", "v_proj", "qkv"]})
    measurement, _, _ = _integrity(planted)
    assert not measurement.passed
    assert "target_modules entries matching no module of the model: ['qkv']" in measurement.message


def test_the_merged_export_is_checked_against_the_adapter(folders: dict[str, Path]) -> None:
    root = folders["lora"].parent
    good, _, _ = _integrity(folders["lora"], merged=str(root / "merged"))
    assert good.passed, good.message
    assert good.details["merged"]["merged_vs_adapter"]["max_abs"] < 1e-3
    bad, _, _ = _integrity(folders["lora"], merged=str(root / "not_merged"))  # peft#1836: export != adapter
    assert not bad.passed
    assert "merged folder vs base + adapter: max |Δlogit|" in bad.message
    assert "the merged folder's output equals the base's" in bad.message


def test_a_method_peftcheck_trained_is_checked_through_its_own_save() -> None:
    suite = tiny_suite({"lora": {"peft": "LoraConfig", "r": 4, "target_modules": ["q_proj", "v_proj"]}})
    measurement = run_check(quiet_pipeline(), load(suite), "lora", "adapter_integrity")
    assert measurement.passed, measurement.message
    assert measurement.details["tensors"] == 8


OTHER_TYPES = {  # other peft types: presence and shapes come from peft itself (the config applied to the base)
    "ia3": ("IA3Config", {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}, []),
    "prompt": ("PromptTuningConfig", {"num_virtual_tokens": 4}, []),
    "lokr": ("LoKrConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_weights": False}, []),
    # VeRA saves its shared projections beside the per-layer vectors; lambda_b starts at zero
    "vera": ("VeraConfig", {"r": 8, "target_modules": ["q_proj", "k_proj"]}, ["vera_lambda_b"]),
    # issue 26: the token rows' originals are a buffer peft does not save (not a missing tensor), and
    # the lm_head copy is saved under lm_head's own name
    "trainable_tokens": ("TrainableTokensConfig", {"target_modules": ["embed_tokens"], "token_indices": [1, 2, 3]}, []),
    "lora_copies": ("LoraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False,
                                   "modules_to_save": ["lm_head"], "trainable_token_indices": {"embed_tokens": [1, 2]}},
                    []),
}


@pytest.fixture(scope="module")
def other_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import peft

    root = tmp_path_factory.mktemp("other_types")
    for name, (cls, kwargs, _) in OTHER_TYPES.items():
        torch.manual_seed(0)
        model = peft.get_peft_model(_tiny_llama_base(), getattr(peft, cls)(task_type="CAUSAL_LM", **kwargs))
        model.save_pretrained(root / name)
    return {name: root / name for name in OTHER_TYPES}


@pytest.mark.parametrize("name", list(OTHER_TYPES))
def test_other_peft_types_are_checked_through_peft(other_folders: dict[str, Path], tmp_path: Path, name: str) -> None:
    allow_zero = OTHER_TYPES[name][2]
    loaded = load(tiny_suite({"mine": {"adapter": str(other_folders[name])}}, model="tiny-llama"))
    measurement = run_check(quiet_pipeline(), loaded, "mine", "adapter_integrity", allow_zero=allow_zero)
    assert measurement.passed, measurement.message

    def drop(state: dict[str, Any]) -> None:
        del state[sorted(state)[0]]

    planted = _planted(other_folders[name], tmp_path, tensors=drop)
    loaded = load(tiny_suite({"mine": {"adapter": str(planted)}}, model="tiny-llama"))
    measurement = run_check(quiet_pipeline(), loaded, "mine", "adapter_integrity", allow_zero=allow_zero)
    assert not measurement.passed and "the config implies are missing from the file" in measurement.message
