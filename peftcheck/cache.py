"""The pipeline's caches: one base model per (model, dtype, quantization, device), one trained
artifact per (suite, method), and the evaluation data per suite."""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftcheck.errors import PeftcheckError, SuiteError
from peftcheck.spec import LoadedSuite, MethodSpec

__all__ = ["BaseHandle", "SuiteData", "TrainedArtifact", "Pipeline"]

# what a cache entry keeps of the method record (issue 14); the resource fields are served only
# under `cache.recorded`, never as this run's measurement
_RESOURCE_FIELDS = ("train_time_s", "tokens_per_s", "step_times_s", "prepare_time_s")
_CACHED_FIELDS = (
    "peft", "backend", "trainer", "quantization", "dtype", "loss_curve", "trainable_params", "total_params",
    "optimizer_hook_calls", "model", "metrics", "env", *_RESOURCE_FIELDS,
)


@dataclasses.dataclass
class BaseHandle:
    """A loaded base model that no check trains or saves: each method trains on a deep copy.

    Forwards do change a 4-bit base on a CPU with AVX512-BF16 (bitsandbytes 0.50.2 repacks its
    weights in place, after which nothing trains through them), so a quantized CPU base keeps an
    untouched copy, ``pristine``, that methods are copied from: what one suite's checks ran on
    the shared base cannot decide whether another suite's method trains."""

    source: Any  # models.ModelSource
    model: Any
    tokenizer: Any
    dtype: str
    quantization: str
    device: str
    load_time_s: float
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
    pristine: Any = None

    @property
    def training_source(self) -> Any:
        """The model each method's deep copy is taken from."""
        return self.model if self.pristine is None else self.pristine


@dataclasses.dataclass
class SuiteData:
    train: Any
    eval: Any | None
    eval_texts: list[str]
    raw_train: Any = None  # the untokenized rows: TRL's SFTTrainer tokenizes them itself (issue 15)
    raw_eval: Any = None
    tokenizer: Any = None  # the base's, or a copy with the suite's data.chat_template; Pipeline.data always sets it


@dataclasses.dataclass
class TrainedArtifact:
    """One trained method and everything checks read about it."""

    suite: LoadedSuite
    method: str
    spec: MethodSpec
    base: BaseHandle
    model: Any  # the trained PeftModel (or another backend's model)
    config: Any
    data: SuiteData
    collate: Any
    train: Any  # train.TrainResult
    initial_trainable: dict[str, Any]
    record: dict[str, Any]
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.base.device


# issue 15's fields, left out of the fingerprint at their defaults so older baselines still match
_NEW_DATA_FIELDS = ("format", "prompt_field", "completion_field", "messages_field", "loss", "chat_template")


def fingerprint(suite: LoadedSuite, method: str) -> str:
    from peftcheck.spec import DataSpec

    spec = suite.spec
    data, mdump = spec.data.model_dump(), spec.methods[method].model_dump()
    for key in _NEW_DATA_FIELDS:
        if data[key] == DataSpec.model_fields[key].default:
            del data[key]
    mdump.pop("trainer", None)
    payload = {
        "model": spec.model, "dtype": spec.dtype, "data": data,
        "train": spec.train_args(method), "method": mdump,
    }  # fmt: skip
    if spec.trainer_of(method) != "hf":
        payload["trainer"] = spec.trainer_of(method)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """Resolve → train → hand out artifacts; shared by the pytest plugin and the CLI."""

    def __init__(
        self,
        *,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        progress: Callable[[str], None] | None = None,
        max_live: int = 3,
        cache: Any = None,
    ) -> None:
        from peftcheck.artifact_cache import ArtifactCache

        self.on_record = on_record or (lambda record: None)
        # the API's default is no cache; the plugin and `peftcheck run` pass --peftcheck-cache's (issue 14)
        self.cache: ArtifactCache = cache or ArtifactCache(Path(), "off")
        self.progress = progress or (lambda line: print(line, file=sys.stderr))
        self.max_live = max_live
        self._bases: dict[tuple[str, ...], BaseHandle] = {}
        self._data: dict[tuple[str, int], SuiteData] = {}
        self._live: collections.OrderedDict[tuple[str, str], TrainedArtifact] = collections.OrderedDict()
        self._errors: dict[tuple[str, str], BaseException] = {}
        self._records: dict[tuple[str, str], dict[str, Any]] = {}

    # -- stages ------------------------------------------------------------------------------
    def base(self, suite: LoadedSuite, quantization: str) -> BaseHandle:
        from peftcheck import models

        spec = suite.spec
        source = models.resolve_model(spec.model, base_dir=Path(suite.path).parent,
                                      trust_remote_code=spec.trust_remote_code)
        device = models.pick_device(spec.device)
        key = (source.path or source.ref, spec.dtype, quantization, device)
        if key not in self._bases:
            started = time.perf_counter()
            model, tokenizer = models.load_base(
                source, dtype=spec.dtype, quantization=quantization, device=device,
                trust_remote_code=spec.trust_remote_code,
            )  # fmt: skip
            for param in model.parameters():
                param.requires_grad_(False)
            self._bases[key] = BaseHandle(
                source, model, tokenizer, spec.dtype, quantization, device, time.perf_counter() - started,
                pristine=copy.deepcopy(model) if quantization != "none" and device == "cpu" else None,
            )  # fmt: skip
        return self._bases[key]

    def data(self, suite: LoadedSuite, tokenizer: Any) -> SuiteData:
        from peftcheck import data

        key = (suite.path + "::" + suite.spec.suite, id(tokenizer))
        if key not in self._data:
            spec, base_dir = suite.spec.data, Path(suite.path).parent
            tokenizer = data.suite_tokenizer(tokenizer, spec, base_dir=base_dir)
            raw = data.load_split(spec.dataset, spec.split, base_dir=base_dir)
            train = data.encode_split(raw, tokenizer, spec)
            evaluation, raw_eval = None, None
            if spec.eval_split:
                raw_eval = data.load_split(spec.dataset, spec.eval_split, base_dir=base_dir)
                evaluation = data.encode_split(raw_eval, tokenizer, spec)
            shown = raw_eval if raw_eval is not None else raw
            if spec.format == "text":
                texts = [str(t) for t in shown[spec.text_field][:4]]
            else:  # the rendered rows, as the model reads them
                encoded = evaluation if evaluation is not None else train
                texts = [tokenizer.decode(row["input_ids"]) for row in encoded.select(range(min(4, len(encoded))))]
            self._data[key] = SuiteData(train, evaluation, texts, raw, raw_eval, tokenizer)
        return self._data[key]

    def base_perplexity(self, suite: LoadedSuite, base: BaseHandle) -> float | None:
        from peftcheck import data as data_mod
        from peftcheck.measure import perplexity

        suite_data = self.data(suite, base.tokenizer)
        if suite_data.eval is None:
            return None
        d = suite.spec.data  # format, loss and template decide which tokens are scored (issue 15)
        key = f"ppl::{d.dataset}::{d.eval_split}::{d.max_length}::{d.format}::{d.loss_scope}::{d.chat_template}"
        if key not in base.memo:
            collate = data_mod.collator(base.tokenizer)
            base.memo[key] = perplexity(base.model, suite_data.eval, collate, device=base.device)
        return base.memo[key]

    def artifact(self, suite: LoadedSuite, method: str) -> TrainedArtifact:
        """The trained artifact of (suite, method), training it on first use."""
        from peftcheck.checks.registry import NotApplicable  # the checks import this module

        key = (suite.path + "::" + suite.spec.suite, method)
        if key in self._errors:
            raise self._errors[key]
        if key in self._live:
            self._live.move_to_end(key)
            return self._live[key]
        try:
            artifact = self._train(suite, method)
        except NotApplicable:  # a saved folder peftcheck will not load: every item says why, none fails
            raise
        except SuiteError as exc:
            error: BaseException = exc.located(file=suite.path, line=suite.line_of(*(exc.field or "").split(".")))
            self._fail(suite, method, key, error)
            raise error from None
        except Exception as exc:  # documented boundary: one method failing leaves the rest going
            self._fail(suite, method, key, exc)
            raise
        self._live[key] = artifact
        while len(self._live) > self.max_live:
            self._live.popitem(last=False)  # deterministic: retrained if asked for again
        return artifact

    def _fail(self, suite: LoadedSuite, method: str, key: tuple[str, str], exc: BaseException) -> None:
        self._errors[key] = exc
        self.progress(f"peftcheck: {suite.spec.suite}/{method} failed: {type(exc).__name__}: {exc}")
        self._records[key] = {
            "kind": "method", "suite": suite.spec.suite, "suite_file": suite.path, "method": method,
            "status": "error", "error": f"{type(exc).__name__}: {exc}", "from_cache": False,
        }  # fmt: skip
        self.on_record(self._records[key])  # now: under xdist it travels with the item's report (issue 14)

    def _first_record(self, suite: LoadedSuite, method: str, record: dict[str, Any]) -> dict[str, Any]:
        """The method's record: a retrained (evicted) artifact keeps the first one, handed on once,
        when made, so under xdist it travels with the report of the item that trained it (issue 14)."""
        key = (suite.path + "::" + suite.spec.suite, method)
        if key not in self._records:
            self._records[key] = record
            self.on_record(record)
        return self._records[key]

    def _train(self, suite: LoadedSuite, method: str) -> TrainedArtifact:
        from transformers import set_seed

        from peftcheck import data as data_mod
        from peftcheck import methods
        from peftcheck.measure import perplexity
        from peftcheck.progress import MethodProgress
        from peftcheck.record import environment
        from peftcheck.train import train_model, trainable_snapshot

        from peftcheck import artifact as saved

        if saved.is_artifact(suite.spec.methods[method]):  # artifact mode: loaded, not trained (issue 15)
            loaded = TrainedArtifact(suite, method, *saved.load(self, suite, method))
            loaded.record = self._first_record(suite, method, loaded.record)
            return loaded
        started = time.perf_counter()
        spec = suite.spec
        mspec = spec.methods[method]
        args = spec.train_args(method)
        config = methods.build_config(mspec, name=method, max_steps=int(args["max_steps"]))
        base = self.base(suite, mspec.quantization)
        suite_data = self.data(suite, base.tokenizer)
        collate = data_mod.collator(suite_data.tokenizer)
        trainer = spec.trainer_of(method)
        untrained_config = copy.deepcopy(config)  # training may write into it (AdaLoRA's rank_pattern)

        def fresh(again: bool = False) -> tuple[Any, dict[str, Any]]:  # the untrained model; a cache hit rebuilds it too
            set_seed(int(args["seed"]))
            model = methods.apply_method(
                copy.deepcopy(base.training_source), copy.deepcopy(untrained_config) if again else config,
                quantization=mspec.quantization, name=method,
            )  # fmt: skip
            return model, trainable_snapshot(model)

        # SFTTrainer applies the adapter itself and may widen its config (modules_to_save, trainable
        # tokens): a hit could not rebuild that model, so trainer: sft methods always train
        cacheable = self.cache.mode != "off" and trainer != "sft"
        key = self.cache.key(suite, method, base=base, data=suite_data, config=config) if cacheable else None
        cached, warning = self.cache.lookup(key) if key is not None and self.cache.reads else (None, None)
        if cached is not None:
            try:
                return self._from_cache(suite, method, cached, fresh, base, suite_data, collate, config, started)
            except Exception as exc:  # documented boundary: an entry that does not load is a retrain
                warning = self.cache.warn(f"artifact cache entry {cached.path} does not load ({type(exc).__name__}: {exc}); retraining")
        live = MethodProgress.start(
            self.progress, f"{spec.suite}/{method}",
            detail=f"{type(config).__name__}, {mspec.quantization}, {args['max_steps']} steps",
        )  # fmt: skip
        sft = None
        if trainer == "sft":  # SFTTrainer applies the adapter itself and may change its config
            from peftcheck.train import SftRun

            set_seed(int(args["seed"]))
            sft = SftRun.build(
                copy.deepcopy(base.training_source), config, suite_data, data_spec=spec.data, args=args,
                device=base.device, quantization=mspec.quantization, method=method,
            )  # fmt: skip
            model, config = sft.model, sft.config  # the effective config: checks count from it
            initial = trainable_snapshot(model)
        else:
            model, initial = fresh()
        if not initial:
            raise PeftcheckError(f"{spec.suite}/{method}: the method made no parameter trainable")
        # the adapter as initialised, before any step: LoRA starts as the identity, a prefix does not
        init_ppl = None if suite_data.eval is None else perplexity(model, suite_data.eval, collate, device=base.device)
        if sft is not None:
            result = sft.train(step_hook=methods.optimizer_step_hook(model), progress=live.step)
        else:
            result = train_model(
                model, suite_data.train, collate, args=args, device=base.device,
                step_hook=methods.optimizer_step_hook(model), progress=live.step,
            )  # fmt: skip
        trainable, total = methods.parameter_counts(model)
        metrics: dict[str, dict[str, Any]] = {
            "final_loss": {"value": result.loss_curve[-1][1] if result.loss_curve else None, "unit": "nats"},
            "train_time_s": {"value": result.train_time_s, "unit": "s"},
            "tokens_per_s": {"value": result.tokens_per_s, "unit": "tokens/s"},
            "peak_rss_mib": {"value": result.memory_peak_mib, "unit": "MiB"},
        }
        if suite_data.eval is not None:
            ppl = perplexity(model, suite_data.eval, collate, device=base.device)
            metrics["eval_perplexity"] = {"value": ppl, "unit": "ppl"}
            metrics["base_eval_perplexity"] = {"value": self.base_perplexity(suite, base), "unit": "ppl"}
            metrics["init_eval_perplexity"] = {"value": init_ppl, "unit": "ppl"}
        record = {
            "kind": "method", "suite": spec.suite, "suite_file": suite.path, "method": method,
            "status": "trained", "error": None, "fingerprint": fingerprint(suite, method),
            "peft": mspec.peft if mspec.backend == "peft" else f"adapters:{mspec.config}",
            "backend": mspec.backend, "trainer": trainer, "quantization": mspec.quantization, "dtype": spec.dtype,
            "device": base.device, "loss_curve": result.loss_curve, "step_times_s": result.step_times_s,
            "train_time_s": result.train_time_s, "tokens_per_s": result.tokens_per_s,
            "trainable_params": trainable, "total_params": total, "optimizer_hook_calls": result.hook_calls,
            "model": {"ref": base.source.ref, "source": base.source.source, "real": base.source.real},
            "metrics": metrics, "samples": [], "env": environment(),
            # base load, adapter, training and its evaluations: the item that trains pays it (issue 17)
            "prepare_time_s": time.perf_counter() - started, "from_cache": False, "cache": None,
        }  # fmt: skip
        if key is not None and self.cache.writes:
            from peftcheck.artifact_cache import trained_configs

            meta = {"record": {k: record[k] for k in _CACHED_FIELDS}, "train": result.recorded(),
                    "peft_config": trained_configs(model)}  # fmt: skip
            record["cache"] = self.cache.store(key, model=model, initial=initial, meta=meta, rebuild=lambda: fresh(again=True))
            record["prepare_time_s"] = time.perf_counter() - started
        if warning is not None:
            record["cache"] = {**(record["cache"] or {}), "warning": warning}
        record = self._first_record(suite, method, record)
        artifact = TrainedArtifact(
            suite, method, mspec, base, model, config, suite_data, collate, result, initial, record
        )
        loss = result.loss_curve
        live.done(result.train_time_s, loss)
        return artifact

    def _from_cache(
        self, suite: LoadedSuite, method: str, entry: Any, fresh: Callable[[], tuple[Any, dict[str, Any]]],
        base: BaseHandle, suite_data: SuiteData, collate: Any, config: Any, started: float,
    ) -> TrainedArtifact:
        """The trained artifact rebuilt from a verified cache entry, instead of training."""
        from peftcheck.artifact_cache import RESOURCE_METRICS
        from peftcheck.record import environment
        from peftcheck.train import TrainResult

        spec, mspec = suite.spec, suite.spec.methods[method]
        model, initial = fresh()
        entry.load_into(model)  # and leaves it in eval mode, as training does
        then = entry.meta["record"]
        train = entry.meta["train"]
        result = TrainResult(**{**train, "loss_curve": [tuple(p) for p in train["loss_curve"]]})
        result.train_dataset = suite_data.train  # what train_model trains on (SFT methods are never cached)
        metrics = {k: v for k, v in then["metrics"].items() if k not in RESOURCE_METRICS}
        record = {
            "kind": "method", "suite": spec.suite, "suite_file": suite.path, "method": method,
            "status": "trained", "error": None, "fingerprint": fingerprint(suite, method),
            **{k: then[k] for k in _CACHED_FIELDS if k not in ("metrics", "env", "model", *_RESOURCE_FIELDS)},
            "model": {"ref": base.source.ref, "source": base.source.source, "real": base.source.real},
            "metrics": metrics, "samples": [], "env": environment(), "device": base.device,
            "train_time_s": None, "tokens_per_s": None, "step_times_s": [],
            "from_cache": True,
            "cache": {"key": entry.digest, "entry": str(entry.path),
                      "recorded": {k: then[k] for k in _RESOURCE_FIELDS} | {"env": then.get("env")}},
            "prepare_time_s": time.perf_counter() - started,
        }  # fmt: skip
        record = self._first_record(suite, method, record)
        self.progress(f"peftcheck: {spec.suite}/{method} from the artifact cache ({entry.path}), not trained")
        return TrainedArtifact(suite, method, mspec, base, model, config, suite_data, collate, result, initial, record)

    def close(self) -> None:
        """Drop the models; each method record was handed to ``on_record`` when it was made."""
        self._records.clear()
        self._live.clear()
        self._bases.clear()
