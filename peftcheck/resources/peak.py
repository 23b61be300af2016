"""Peak memory per phase of one method, measured in a fresh child process.

The parent (``probe``) sends the suite and a method to ``python -m peftcheck.resources.peak``.
The child loads the base (quantizing it on the fly), applies the method, trains a few steps,
saves the adapter and merges it, through the same peftcheck functions the pipeline uses. Before
each phase it returns freed heap memory to the OS and resets the kernel's high-water mark
(``/proc/self/clear_refs``), so a phase's peak is its own: not the previous phase's, and not the
previous method's (a new process per method). On a GPU the phases read CUDA's peak statistics.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftcheck.errors import PeftcheckError

__all__ = ["PHASES", "probe", "measure", "PhaseMeter"]

# "load" quantizes as it loads for a quantized base: transformers quantizes each weight as it
# reads it, so load and quantize are one phase (its details name the quantization).
PHASES = ("load", "adapt", "train_step", "save", "merge")
MIB = 2**20


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so RSS is live memory."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Sampler(threading.Thread):
    """Fallback without /proc/self/clear_refs: the RSS sampled every millisecond."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self._process = psutil.Process()
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss / MIB)
            time.sleep(0.001)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._process.memory_info().rss / MIB)


class PhaseMeter:
    """Measures each phase's peak growth over the memory live when it started."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.phases: dict[str, dict[str, Any]] = {}
        self.baseline_mib = self._current()

    def _current(self) -> float:
        if self.device == "cuda":
            import torch

            return torch.cuda.memory_allocated() / MIB
        _trim()
        try:
            return _status_mib("VmRSS")
        except (OSError, KeyError):
            import psutil

            return psutil.Process().memory_info().rss / MIB

    @contextlib.contextmanager
    def phase(self, name: str, **details: Any) -> Iterator[None]:
        if self.device == "cuda":
            with self._cuda(name, details):
                yield
            return
        before = self._current()
        sampler = None if _reset_high_water_mark() else _Sampler()
        if sampler is not None:
            sampler.start()
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        peak = sampler.stop() if sampler is not None else _status_mib("VmHWM")
        after = self._current()
        kinds = {}
        with contextlib.suppress(OSError, KeyError):  # file-backed pages are mapped weights
            kinds = {"anon_after_mib": _status_mib("RssAnon"), "file_after_mib": _status_mib("RssFile")}
        self.phases[name] = {
            "peak_mib": max(peak - before, 0.0), "retained_mib": after - before, "before_mib": before,
            "peak_abs_mib": peak, "seconds": seconds, **kinds,
            "meter": "VmHWM reset per phase" if sampler is None else "RSS sampled every 1 ms",
            **details,
        }  # fmt: skip

    @contextlib.contextmanager
    def _cuda(self, name: str, details: dict[str, Any]) -> Iterator[None]:
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        allocated, reserved = torch.cuda.memory_allocated() / MIB, torch.cuda.memory_reserved() / MIB
        started = time.perf_counter()
        yield
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / MIB
        self.phases[name] = {
            "peak_mib": peak - allocated, "reserved_peak_mib": torch.cuda.max_memory_reserved() / MIB - reserved,
            "retained_mib": torch.cuda.memory_allocated() / MIB - allocated, "before_mib": allocated,
            "peak_abs_mib": peak, "seconds": time.perf_counter() - started, "meter": "torch.cuda peak stats",
            **details,
        }  # fmt: skip

    def summary(self) -> dict[str, Any]:
        measured = [p for p in self.phases.values() if "peak_abs_mib" in p]
        peak = max((p["peak_abs_mib"] for p in measured), default=self.baseline_mib)
        return {
            "device": self.device, "baseline_mib": self.baseline_mib, "phases": self.phases,
            "total": {"peak_mib": peak - self.baseline_mib, "peak_abs_mib": peak},
        }  # fmt: skip


def _preimport(source: Any, quantization: str) -> None:
    """Import what loading would import lazily, so module code is not counted as model memory."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if source.synthetic_config is not None:
        config = transformers.AutoConfig.for_model(**source.synthetic_config)
    else:
        config = transformers.AutoConfig.from_pretrained(source.path)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    if quantization != "none":
        import bitsandbytes  # noqa: F401
        import transformers.integrations.bitsandbytes  # noqa: F401


def _fault_in(model: Any) -> None:
    """Touch one element per page of every weight: safetensors maps the file lazily, and without
    this the weights would become resident during the first training step and count there."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel():
                flat = tensor.detach().reshape(-1)
                flat[:: max(1, 4096 // flat.element_size())].sum()


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: every phase of one method, with its peak memory (MiB)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    from transformers import set_seed

    from peftcheck import data, methods, models, train
    from peftcheck.spec import SuiteSpec

    spec = SuiteSpec.model_validate(request["spec"])
    name, steps = request["method"], int(request["steps"])
    mspec, base_dir = spec.methods[name], Path(request["path"]).parent
    source = models.resolve_model(spec.model, base_dir=base_dir, trust_remote_code=spec.trust_remote_code)
    device = models.pick_device(spec.device)
    _preimport(source, mspec.quantization)
    config = methods.build_config(mspec, name=name, max_steps=steps)
    raw = data.load_split(spec.data.dataset, spec.data.split, base_dir=base_dir)  # before the baseline
    meter = PhaseMeter(device)
    with meter.phase("load", quantization=mspec.quantization, dtype=spec.dtype):
        model, tokenizer = models.load_base(
            source, dtype=spec.dtype, quantization=mspec.quantization, device=device,
            trust_remote_code=spec.trust_remote_code,
        )  # fmt: skip
        for param in model.parameters():
            param.requires_grad_(False)
        _fault_in(model)
    tokenizer = data.suite_tokenizer(tokenizer, spec.data, base_dir=base_dir)
    dataset = data.encode_split(raw, tokenizer, spec.data)  # the suite's format (issue 15; hf trainer steps)
    collate = data.collator(tokenizer)
    args = {**spec.train_args(name), "max_steps": steps}
    set_seed(int(args["seed"]))
    with meter.phase("adapt", peft=type(config).__name__):
        model = methods.apply_method(model, config, quantization=mspec.quantization, name=name)
    with meter.phase("train_step", steps=steps, batch_size=args["per_device_train_batch_size"]):
        train.train_model(model, dataset, collate, args=args, device=device, step_hook=methods.optimizer_step_hook(model))
    with tempfile.TemporaryDirectory(prefix="peftcheck-probe-") as out:
        with meter.phase("save", what="adapter (safetensors)"):
            model.save_pretrained(out)
    reason = methods.can_merge(model)
    if reason is None:
        with meter.phase("merge", what="merge_and_unload"):
            model = model.merge_and_unload()
    else:
        meter.phases["merge"] = {"not_applicable": reason}
    return {"method": name, "steps": steps, "pid": os.getpid(), **meter.summary()}


def probe(suite: Any, method: str, *, steps: int, timeout_s: float) -> dict[str, Any]:
    """In the parent: run ``measure`` for ``method`` of ``suite`` (a LoadedSuite) in a child."""
    request = {
        "spec": suite.spec.model_dump(mode="json"), "path": str(Path(suite.path).resolve()),
        "method": method, "steps": steps,
    }  # fmt: skip
    root = str(Path(__file__).resolve().parents[2])  # this peftcheck, wherever pytest runs from
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="peftcheck-peak-") as tmp:
        request["out"] = str(Path(tmp) / "result.json")
        command = [sys.executable, "-m", "peftcheck.resources.peak"]
        try:
            done = subprocess.run(
                command, input=json.dumps(request), text=True, capture_output=True, timeout=timeout_s, env=env,
                cwd=os.getcwd(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise PeftcheckError(f"peak-memory probe of {method!r} ran past timeout_s={timeout_s:g}") from None
        out = Path(request["out"])
        if done.returncode != 0 or not out.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise PeftcheckError(f"peak-memory probe of {method!r} exited with {done.returncode}:\n{tail}")
        return json.loads(out.read_text(encoding="utf-8"))


def main() -> int:
    request = json.loads(sys.stdin.read())
    result = measure(request)
    Path(request["out"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
