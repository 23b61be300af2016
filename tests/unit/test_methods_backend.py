"""The backend layer (issue 13): a backend is one module plus one ``register_backend`` line, the
checks reach adapters only through it, and a defect planted in a backend fails the check that
names it. This file is such a module: peft's backend with one defect switched on per test."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, load, quiet_pipeline, run_check, tiny_suite
from peftcheck import methods
from peftcheck.methods.peft_backend import PeftBackend

LORA = {"peft": "LoraConfig", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


class PlantedBackend(PeftBackend):
    """peft's backend, marking what it builds as its own so every call comes back here."""

    name = "planted"
    drop_one_tensor = False
    count_offset = 0

    def build_config(self, method: Any, *, name: str, max_steps: int) -> Any:
        config = super().build_config(method, name=name, max_steps=max_steps)
        config.peftcheck_backend = self.name  # not a dataclass field: peft's saved config ignores it
        return config

    def apply(self, model: Any, config: Any, **kwargs: Any) -> Any:
        peft_model = super().apply(model, config, **kwargs)
        peft_model.peftcheck_backend = self.name
        return peft_model

    def save(self, model: Any, folder: Path) -> Path:
        weights = super().save(model, folder)
        if self.drop_one_tensor:  # planted: the checkpoint silently misses one trainable tensor
            from safetensors.torch import load_file, save_file

            state = load_file(str(weights))
            del state[sorted(k for k in state if "lora_B" in k)[0]]
            save_file(state, str(weights), metadata={"format": "pt"})
        return weights

    def expected_trainable(self, base_model: Any, config: Any) -> tuple[int | None, str]:
        count, formula = super().expected_trainable(base_model, config)
        return (None if count is None else count + self.count_offset), formula


BACKEND = PlantedBackend()
methods.register_backend("planted", __name__)  # the one registration line


@pytest.fixture(scope="module")
def planted() -> Any:
    suite = tiny_suite({"lora": {**LORA, "backend": "planted"}, "plain": LORA})
    return quiet_pipeline(), load(suite)


@pytest.fixture(autouse=True)
def _sound() -> Any:
    yield
    BACKEND.drop_one_tensor, BACKEND.count_offset = False, 0


def test_a_backend_registered_from_one_module_drives_the_checks(planted: Any) -> None:
    pipeline, loaded = planted
    artifact = pipeline.artifact(loaded, "lora")
    assert methods.backend_for(artifact.model) is BACKEND and methods.backend_for(artifact.config) is BACKEND
    assert "planted" in methods.registered_backends()
    for check in ("save_load_roundtrip", "trainable_ratio", "merge_equivalence", "disable_equals_base"):
        measurement = run_check(pipeline, loaded, "lora", check)
        assert measurement.passed, f"{check}: {measurement.message}"
    # the same method through peft's backend measures the same
    ours = run_check(pipeline, loaded, "lora", "trainable_ratio").details
    theirs = run_check(pipeline, loaded, "plain", "trainable_ratio").details
    assert ours["trainable"] == theirs["trainable"] == ours["analytic"]


def test_a_backend_saving_one_tensor_too_few_fails_save_load_roundtrip(planted: Any) -> None:
    pipeline, loaded = planted
    BACKEND.drop_one_tensor = True
    measurement = run_check(pipeline, loaded, "lora", "save_load_roundtrip")
    assert not measurement.passed
    assert "1 missing tensor(s): [" in measurement.message and "lora_B" in measurement.message, measurement.message


def test_an_analytic_count_off_by_one_fails_trainable_ratio(planted: Any) -> None:
    pipeline, loaded = planted
    BACKEND.count_offset = 1
    measurement = run_check(pipeline, loaded, "lora", "trainable_ratio")
    assert not measurement.passed
    trainable = measurement.details["trainable"]
    assert f"trainable count {trainable} != analytic {trainable + 1}" in measurement.message


def test_an_unregistered_backend_is_a_located_suite_error() -> None:
    from peftcheck.errors import SuiteError

    with pytest.raises(SuiteError) as raised:
        load(tiny_suite({"lora": {**LORA, "backend": "nope"}}))
    assert raised.value.field == "methods.lora.backend" and "registered: " in str(raised.value)


def test_every_registered_backend_implements_the_protocol() -> None:
    for name in methods.registered_backends():
        assert isinstance(methods.get_backend(name), methods.Backend), name


# -- the layering the backend makes possible --------------------------------------------------
PACKAGE = ROOT / "peftcheck"
LIBRARIES = ("peft", "bitsandbytes", "adapters")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_check_imports_an_adapter_library() -> None:
    wrong = [
        f"{path.name}:{line} imports {name}"
        for path in sorted((PACKAGE / "checks").glob("*.py"))
        for line, name in _imports(path) if name.split(".")[0] in LIBRARIES
    ]  # fmt: skip
    assert not wrong, wrong


def test_no_check_branches_on_a_config_class_name() -> None:
    # a config class name as a string literal in a check is method knowledge outside peftcheck.methods
    wrong = [
        f"{path.name}:{node.lineno} {node.value!r}"
        for path in sorted((PACKAGE / "checks").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("Config")
        and node.value[:1].isupper() and " " not in node.value
    ]  # fmt: skip
    assert not wrong, wrong


def _module_graph() -> dict[str, set[str]]:
    """peftcheck module -> the peftcheck modules it imports, lazily or not (TYPE_CHECKING aside);
    a package's imports of its own submodules are not edges."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else ""

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(sub) for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for sub in ast.walk(node)
        }  # fmt: skip
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {owner(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = {d for d in deps if d and d != name and not d.startswith(name + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_peftchecks_modules_import_each_other_without_a_cycle() -> None:
    # spec -> checks, the check registry -> its implementations and fixtures <-> models were cycles (issue 13)
    assert _cycle(_module_graph()) is None, " -> ".join(_cycle(_module_graph()) or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = _module_graph()
    graph["peftcheck.fixtures"] = graph["peftcheck.fixtures"] | {"peftcheck.models"}  # planted: the old import
    cycle = _cycle(graph)
    assert cycle and set(cycle) == {"peftcheck.fixtures", "peftcheck.models"} and cycle[0] == cycle[-1]


def test_every_facts_row_names_a_config_class_of_this_peft() -> None:
    import peft
    from packaging.version import Version

    from peftcheck.methods.facts import FACTS

    if Version(peft.__version__) < Version("0.21"):
        pytest.skip(f"the table is written against peft 0.21; peft {peft.__version__} lacks newer types")
    unknown = sorted(kind for kind in FACTS if not isinstance(getattr(peft, kind, None), type))
    assert not unknown, unknown
