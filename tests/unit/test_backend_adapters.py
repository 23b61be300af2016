"""peftcheck.methods.adapterhub: the analytic count of bottleneck adapters, skipping where the
library is missing or broken, and (where `adapters` imports: `nox -t adapters`) a trained
Houlsby adapter through the pipeline."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from peftcheck import methods
from peftcheck.methods import adapterhub as backend
from peftcheck.errors import MissingExtraError, SuiteError
from peftcheck.spec import MethodSpec
from peftcheck.loader import load_suite

ROOT = Path(__file__).resolve().parents[2]


def bn(**overrides: Any) -> SimpleNamespace:
    """The fields of adapters' BnConfig that the count reads, Pfeiffer's defaults."""
    fields = dict(architecture=None, mh_adapter=False, output_adapter=True, reduction_factor=16, ln_before=False,
                  ln_after=False, scaling=1.0, use_gating=False, phm_layer=False, inv_adapter=None,
                  cross_adapter=False, leave_out=[])  # fmt: skip
    fields.update(overrides)
    return SimpleNamespace(**fields)


BASE = SimpleNamespace(config=SimpleNamespace(hidden_size=64, num_hidden_layers=4))
PER = 64 * 4 + 4 + 4 * 64 + 64  # one adapter, h=64, d=h//16=4: down + bias + up + bias = 580

# (case, config fields, expected count or None)
COUNTS = [
    ("pfeiffer: after the MLP, every layer", {}, 4 * PER),
    ("houlsby: after attention and after the MLP", {"mh_adapter": True}, 8 * PER),
    ("reduction_factor 8", {"reduction_factor": 8}, 4 * (64 * 8 + 8 + 8 * 64 + 64)),
    ("a tiny bottleneck keeps one unit", {"reduction_factor": 128}, 4 * (64 + 1 + 64 + 64)),
    ("layer norms before and after", {"ln_before": True, "ln_after": True}, 4 * (PER + 4 * 64)),
    ("learned scalar scaling", {"scaling": "learned"}, 4 * (PER + 1)),
    ("per-channel scaling", {"scaling": "channel"}, 4 * (PER + 64)),
    ("gating", {"use_gating": True}, 4 * (PER + 65)),
    ("leave_out skips layers, ignores unknown ones", {"leave_out": [0, 2, 99]}, 2 * PER),
    ("per-layer reduction_factor", {"reduction_factor": {"default": 16}}, None),
    ("PHM layers (Compacter)", {"phm_layer": True}, None),
    ("invertible adapters", {"inv_adapter": "nice"}, None),
    ("not a bottleneck", {"architecture": "lora"}, None),
]  # fmt: skip


@pytest.mark.parametrize("case, fields, expected", COUNTS, ids=[c[0] for c in COUNTS])
def test_analytic_count_of_bottleneck_adapters(case: str, fields: dict[str, Any], expected: int | None) -> None:
    config = backend.AdaptersConfig("seq_bn", {}, bn(**fields))
    count, formula = methods.expected_trainable(BASE, config)  # through the method-agnostic entry
    assert count == expected, formula
    assert formula


def test_missing_library_is_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "is_adapters_available", lambda: False)
    method = MethodSpec(backend="adapters", config="double_seq_bn")
    with pytest.raises(MissingExtraError, match=r"pip install 'peftcheck\[adapters\]'"):
        methods.build_config(method, name="houlsby", max_steps=3)


def test_a_library_that_fails_to_import_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "is_adapters_available", lambda: True)
    monkeypatch.setitem(sys.modules, "adapters", None)  # `import adapters` raises ImportError
    with pytest.raises(MissingExtraError, match=r"adapters cannot be imported \(ModuleNotFoundError: import of adapters halted"):
        backend.build_config(MethodSpec(backend="adapters", config="seq_bn"), name="pfeiffer")


def test_the_adapters_suite_loads_and_names_its_backend() -> None:
    spec = load_suite(ROOT / "suites" / "adapters.yaml").spec
    kinds = {name: (m.backend, m.config) for name, m in spec.methods.items()}
    assert kinds["houlsby"] == ("adapters", "double_seq_bn") and kinds["pfeiffer"] == ("adapters", "seq_bn")
    assert spec.expectations("houlsby")["latency_overhead"]["max_unmerged_ratio"] > 1


# -- with the library (nox -t adapters) ------------------------------------------------------------

needs_adapters = pytest.mark.skipif(not backend.is_adapters_available(), reason="adapters is not installed")


@needs_adapters
@pytest.mark.parametrize(
    "kwargs, field, hint",
    [({"config": "houlsbi"}, "methods.m.config", "houlsby"),
     ({"config": "seq_bn", "reduction_fator": 8}, "methods.m.reduction_fator", "reduction_factor"),
     ({"config": "seq_bn", "quantization": "nf4"}, "methods.m.quantization", "quantization: none")],
)  # fmt: skip
def test_suite_errors_name_the_field(kwargs: dict[str, Any], field: str, hint: str) -> None:
    with pytest.raises(SuiteError) as exc:
        backend.build_config(MethodSpec(backend="adapters", **kwargs), name="m")
    assert exc.value.field == field and hint in (exc.value.hint or "")


@needs_adapters
def test_houlsby_on_tiny_llama_trains_only_its_adapters() -> None:
    from tests.helpers import CORPUS, load, quiet_pipeline, run_check

    suite = {
        "suite": "tiny-adapters", "model": "tiny-llama",
        "data": {"dataset": CORPUS, "split": "train[:32]", "eval_split": "train[-8:]", "text_field": "text",
                 "max_length": 24},
        "train": {"max_steps": 4, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "seed": 0},
        "methods": {"houlsby": {"backend": "adapters", "config": "double_seq_bn", "reduction_factor": 8}},
    }  # fmt: skip
    loaded, pipeline = load(suite), quiet_pipeline()
    ratio = run_check(pipeline, loaded, "houlsby", "trainable_ratio")
    assert ratio.passed and ratio.details["analytic"] == ratio.details["trainable"], ratio.message
    assert run_check(pipeline, loaded, "houlsby", "base_frozen").passed
    artifact = pipeline.artifact(loaded, "houlsby")
    assert "non-linear bottleneck" in (methods.can_merge(artifact.model) or "")
    assert methods.optimizer_step_hook(artifact.model) is None
    trainable = {n: p for n, p in artifact.model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.peftcheck." in n for n in trainable)
    _save_load_roundtrip(artifact, trainable)


def _save_load_roundtrip(artifact: Any, trainable: dict[str, Any]) -> None:
    """What a save/load check needs from the backend: an adapter-only safetensors checkpoint
    that a fresh copy of the base reloads to the same outputs."""
    import copy
    import tempfile

    import torch
    from safetensors.torch import load_file

    from peftcheck.measure import logits, probe_batch

    batch = probe_batch(artifact.base.tokenizer, artifact.data.eval_texts, max_length=24, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = backend.save(artifact.model, tmp)
        saved = load_file(path)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["adapter.safetensors", "adapter_config.json"]
        assert len(saved) == len(trainable)  # every trainable tensor, and no base weight
        assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in trainable.values())
        fresh = backend.load(copy.deepcopy(artifact.base.model), tmp)
    expected, base = logits(artifact.model, batch), logits(artifact.base.model, batch)
    assert torch.equal(logits(fresh, batch), expected)
    assert not torch.allclose(base, expected)  # the adapter does something
    with backend.disabled(artifact.model):  # what a disable_adapter() check needs
        assert torch.allclose(logits(artifact.model, batch), base, atol=1e-5)
    assert torch.equal(logits(artifact.model, batch), expected)


@pytest.fixture(scope="module")
def trained_pfeiffer() -> Any:
    from tests.helpers import CORPUS, load, quiet_pipeline

    suite = {
        "suite": "tiny-adapters", "model": "tiny-llama",
        "data": {"dataset": CORPUS, "split": "train[:32]", "eval_split": "train[-8:]", "text_field": "text",
                 "max_length": 24},
        "train": {"max_steps": 4, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "seed": 0},
        "methods": {"pfeiffer": {"backend": "adapters", "config": "seq_bn"}},
    }  # fmt: skip
    return quiet_pipeline(), load(suite)


@needs_adapters
def test_adapters_disable_that_leaves_the_adapter_on_is_caught(
    trained_pfeiffer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    from tests.helpers import run_check

    pipeline, loaded = trained_pfeiffer
    assert run_check(pipeline, loaded, "pfeiffer", "disable_equals_base").passed
    # planted defect: a disable that does nothing, the adapter stays active inside
    monkeypatch.setattr(backend, "disabled", lambda model: contextlib.nullcontext(model))
    measurement = run_check(pipeline, loaded, "pfeiffer", "disable_equals_base")
    assert not measurement.passed and "disabled vs base" in measurement.message


@needs_adapters
def test_adapters_save_that_drops_one_tensor_is_caught(
    trained_pfeiffer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    from tests.helpers import run_check

    pipeline, loaded = trained_pfeiffer
    assert run_check(pipeline, loaded, "pfeiffer", "save_load_roundtrip").passed
    real_save = backend.save

    def drop_one(model: Any, folder: Any) -> Path:
        path = real_save(model, folder)
        state = load_file(path)
        del state[sorted(state)[0]]  # planted defect: one adapter tensor missing from the file
        save_file(state, str(path))
        return path

    monkeypatch.setattr(backend, "save", drop_one)
    measurement = run_check(pipeline, loaded, "pfeiffer", "save_load_roundtrip")
    assert not measurement.passed and "1 missing tensor(s)" in measurement.message
