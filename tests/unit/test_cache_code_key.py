"""The artifact cache's key covers the code that ran (issue 26): every peftcheck module but a short
exclusion list, the sources of libraries installed editable, from VCS or a local folder, and the
pytest plugins and conftest files of the run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import peftcheck
import peftcheck.artifact_cache as artifact_cache
from peftcheck.artifact_cache import ArtifactCache, CacheWarning, code_digest, installed_code, plugins_code

PACKAGE = Path(peftcheck.__file__).parent
NOT_TRAINING = artifact_cache._NOT_TRAINING

pytest_plugins = ["pytester"]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the peftcheck package, to edit."""
    return Path(shutil.copytree(PACKAGE, tmp_path / "peftcheck", ignore=shutil.ignore_patterns("__pycache__")))


# modules on the path from a suite to its trained model; the old hand-kept list missed all but train.py
@pytest.mark.parametrize("module", [
    "train.py", "artifact.py", "spec.py", "progress.py", "tolerances.py", "methods/peft_backend.py",
    "methods/targets.py", "checks/registry.py", "loader.py", "artifact_cache.py",
])  # fmt: skip
def test_editing_a_module_on_the_training_path_changes_the_key(package: Path, module: str) -> None:
    before = code_digest(package, exclude=NOT_TRAINING)
    with (package / module).open("a", encoding="utf-8") as handle:
        handle.write("\nDEFAULT_SEED = 1\n")
    assert code_digest(package, exclude=NOT_TRAINING) != before


def test_a_new_module_changes_the_key_and_an_excluded_one_does_not(package: Path) -> None:
    before = code_digest(package, exclude=NOT_TRAINING)
    for excluded in ("report/html.py", "matrix.py", "findings.py", "cli.py"):
        (package / excluded).write_text("# rendered differently\n", encoding="utf-8")
    assert code_digest(package, exclude=NOT_TRAINING) == before
    (package / "methods" / "helpers.py").write_text("SCALE = 2\n", encoding="utf-8")
    assert code_digest(package, exclude=NOT_TRAINING) != before


def test_the_key_hashes_the_installed_package() -> None:
    assert artifact_cache._training_code() == code_digest(PACKAGE, exclude=NOT_TRAINING)


@pytest.mark.parametrize("stale", ["methods.py", "backends", "report/nothing.py"])
def test_a_stale_exclusion_fails_loudly(package: Path, stale: str) -> None:
    with pytest.raises(LookupError, match=stale):
        code_digest(package, exclude=(*NOT_TRAINING, stale))


def test_training_imports_no_excluded_module(tmp_path: Path) -> None:
    """What makes the exclusion safe: a fresh process loads and trains a suite and imports none of
    it (a new import from report/ or cli.py on that path fails here, then belongs in the key)."""
    script = """
import json, sys
sys.path.insert(0, sys.argv[1])
from helpers import load, tiny_suite
from peftcheck.cache import Pipeline
suite = load(tiny_suite({"lora": {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj"]}},
                        model="tiny-llama", train={"max_steps": 1, "seed": 0, "per_device_train_batch_size": 8}))
Pipeline(progress=lambda line: None).artifact(suite, "lora")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("peftcheck"))))
"""
    tests = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", script, tests], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = json.loads(done.stdout.splitlines()[-1])
    assert "peftcheck.train" in imported and "peftcheck.methods.peft_backend" in imported
    names = {name.removesuffix(".py") for name in NOT_TRAINING}
    assert not [m for m in imported if m.split(".")[1:2] and m.split(".")[1] in names], imported


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``fakepkg`` importable from tmp_path, its distribution's direct_url.json set by the test."""
    source = tmp_path / "src" / "fakepkg"
    (source / "tuners").mkdir(parents=True)
    (source / "__init__.py").write_text("VERSION = '1.0'\n")
    (source / "tuners" / "lora.py").write_text("def delta(w):\n    return w\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    dist = SimpleNamespace(version="1.0", direct_url=None, files=source)
    dist.read_text = lambda name: dist.direct_url if name == "direct_url.json" else None
    real = artifact_cache.metadata.distribution
    monkeypatch.setattr(artifact_cache.metadata, "distribution", lambda name: dist if name == "fakepkg" else real(name))
    installed_code.cache_clear()
    yield dist
    installed_code.cache_clear()


EDITABLE = {"url": "file:///src/fakepkg", "dir_info": {"editable": True}}
VCS = {"url": "https://github.com/x/fakepkg.git", "vcs_info": {"vcs": "git", "commit_id": "a" * 40}}
LOCAL = {"url": "file:///src/fakepkg", "dir_info": {}}


@pytest.mark.parametrize("direct, how", [(EDITABLE, "editable"), (VCS, "vcs"), (LOCAL, "local")])
def test_a_direct_url_install_is_keyed_on_its_sources(fake_dist: Any, direct: dict[str, Any], how: str) -> None:
    fake_dist.direct_url = json.dumps(direct)
    before = installed_code("fakepkg", "fakepkg")
    assert before["version"] == "1.0" and before["installed"] == how and before["sources"]
    (fake_dist.files / "tuners" / "lora.py").write_text("def delta(w):\n    return 1.3 * w\n")
    installed_code.cache_clear()  # a new process
    after = installed_code("fakepkg", "fakepkg")
    assert after["version"] == "1.0" and after["sources"] != before["sources"]


def test_an_index_release_is_keyed_on_its_version(fake_dist: Any) -> None:
    assert installed_code("fakepkg", "fakepkg") == "1.0"
    (fake_dist.files / "tuners" / "lora.py").write_text("def delta(w):\n    return 1.3 * w\n")
    installed_code.cache_clear()
    assert installed_code("fakepkg", "fakepkg") == "1.0"


def test_the_key_holds_an_editable_librarys_sources(fake_dist: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the contributor's editable peft, patched, under the same version."""
    monkeypatch.setattr(artifact_cache, "_PACKAGES", ("fakepkg", "peftcheck"))
    fake_dist.direct_url = json.dumps(EDITABLE)
    before = artifact_cache._versions()
    (fake_dist.files / "tuners" / "lora.py").write_text("def delta(w):\n    return 1.3 * w\n")
    assert artifact_cache._versions() == before  # hashed once per process
    installed_code.cache_clear()
    after = artifact_cache._versions()
    assert after["fakepkg"]["sources"] != before["fakepkg"]["sources"]
    assert isinstance(after["peftcheck"], str)  # its code is the key's "code", whatever its install


def _configured(pytester: pytest.Pytester) -> dict[str, Any]:
    config = pytester.parseconfigure("-p", "no:cacheprovider")
    return plugins_code(config.pluginmanager, config.rootpath)


def test_the_runs_conftest_files_and_what_they_import_are_in_the_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(patches="SCALE = 1.0\ndef scaled(w):\n    return SCALE * w\n")
    pytester.makeconftest("from patches import scaled\n")
    first = _configured(pytester)
    assert set(first["files"]) == {"conftest.py", "patches.py"} and first["unhashable"] == []
    assert "pytest-xdist" in first["dists"] or "hypothesis" in first["dists"]  # installed plugins: their version
    assert not any(name.startswith("peftcheck") for name in first["dists"])  # the key's "code"
    assert _configured(pytester) == first  # unchanged files: the same key
    pytester.makepyfile(patches="SCALE = 1.3\ndef scaled(w):\n    return SCALE * w\n")
    assert _configured(pytester)["files"]["patches.py"] != first["files"]["patches.py"]


def test_a_plugin_without_a_source_file_turns_caching_off(tmp_path: Path) -> None:
    from helpers import load, tiny_suite
    from peftcheck.cache import Pipeline

    plugin = type("Injected", (), {"__module__": "made_up_module"})()
    manager = SimpleNamespace(list_name_plugin=lambda: [("injected", plugin), ("blocked", None)],
                              list_plugin_distinfo=lambda: [])  # fmt: skip
    code = plugins_code(manager, tmp_path)
    assert code == {"dists": {}, "files": {}, "unhashable": ["made_up_module"]}
    suite = load(tiny_suite({"lora": {"peft": "LoraConfig", "r": 2, "target_modules": ["q_proj"]}}, model="tiny-llama",
                            train={"max_steps": 1, "seed": 0, "per_device_train_batch_size": 8}))  # fmt: skip
    for _ in range(2):
        cache = ArtifactCache(tmp_path / "cache", "on", plugins=lambda: code)
        with pytest.warns(CacheWarning, match="made_up_module"):
            record = Pipeline(progress=lambda line: None, cache=cache).artifact(suite, "lora").record
        assert not record["from_cache"] and record["cache"]["stored"] is False
        assert "made_up_module" in record["cache"]["reason"]
    assert not list((tmp_path / "cache").rglob("manifest.json"))
