"""Training through transformers.Trainer or TRL's SFTTrainer, with a callback recording loss,
step times and memory."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = ["StepProgress", "TrainResult", "train_model", "SftRun", "peak_rss_mib", "memory_mib"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_mib() -> float:
    """Current memory: CUDA allocated if a GPU is in use, else the process RSS, MiB."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclasses.dataclass
class TrainResult:
    """What one training run produced, besides the trained model."""

    loss_curve: list[tuple[int, float]]
    step_times_s: list[float]
    train_time_s: float
    tokens_seen: int
    memory_before_mib: float
    memory_peak_mib: float
    hook_calls: int = 0
    train_dataset: Any = None  # the tokenized rows the trainer trained on (input_ids, labels): label_masking

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_time_s if self.train_time_s > 0 else 0.0

    def recorded(self) -> dict[str, Any]:
        """The figures, for the artifact cache: not the rows, which a hit rebuilds from the suite's
        data (stored, they would come back as a dict of columns)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train_dataset"}


def trainable_snapshot(model: Any) -> dict[str, Any]:
    """A CPU copy of every trainable tensor: the adapter as initialised, before any step."""
    return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if p.requires_grad}


StepProgress = Callable[[int, int, float | None], Any]
"""Called as ``progress(step, total_steps, last_loss)``: step 0 when training starts, then once a step."""


def _recorder(result: TrainResult, hook: Callable[[int], Any] | None, progress: StepProgress | None) -> Any:
    import torch
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        """Records loss per logged step, wall time per step and peak memory; reports progress."""

        def __init__(self) -> None:
            self._started = 0.0

        def _progress(self, state: Any) -> None:
            if progress is not None:
                loss = result.loss_curve[-1][1] if result.loss_curve else None
                progress(int(state.global_step), int(state.max_steps), loss)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._progress(state)

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._started = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if hook is not None:
                hook(state.global_step)
                result.hook_calls += 1

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            result.step_times_s.append(time.perf_counter() - self._started)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = memory_mib()
            result.memory_peak_mib = max(result.memory_peak_mib, peak)
            if not control.should_log:  # a logged step reports in on_log, with its own loss
                self._progress(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                result.loss_curve.append((int(state.global_step), float(logs["loss"])))
                self._progress(state)

    return Recorder()


class _CountingCollator:
    """Wraps a collator to count the non-padding tokens trained on."""

    def __init__(self, inner: Any, result: TrainResult) -> None:
        self.inner = inner
        self.result = result

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        if "attention_mask" in batch:
            self.result.tokens_seen += int((batch["attention_mask"] != 0).sum())
        else:  # a collator that returns no attention mask: every token is a real one
            self.result.tokens_seen += int(batch["input_ids"].numel())
        return batch


def train_model(
    model: Any,
    dataset: Any,
    collate: Any,
    *,
    args: dict[str, Any],
    device: str,
    step_hook: Callable[[int], Any] | None = None,
    progress: StepProgress | None = None,
) -> TrainResult:
    """Train ``model`` in place with Trainer for ``args['max_steps']`` steps.

    ``progress`` is called when training starts and after every step (see ``StepProgress``)."""
    import torch
    from transformers import Trainer, TrainingArguments

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = TrainResult([], [], 0.0, 0, memory_mib(), memory_mib())
    with tempfile.TemporaryDirectory(prefix="peftcheck-train-") as out:
        defaults = {
            "output_dir": out,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "disable_tqdm": True,
            "use_cpu": device == "cpu",
            "dataloader_num_workers": 0,
            "remove_unused_columns": False,
        }
        training_args = TrainingArguments(**{**defaults, **args})
        result.train_dataset = dataset
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            data_collator=_CountingCollator(collate, result),
            callbacks=[_recorder(result, step_hook, progress)],
        )
        started = time.perf_counter()
        trainer.train()
        result.train_time_s = time.perf_counter() - started
    model.eval()
    return result


# SFTConfig's own defaults that would make the two trainers differ on a CPU run: TRL turns on
# gradient checkpointing and bf16 autocast, and logs every 10 steps (the loss curve needs each).
_SFT_DEFAULTS = {"gradient_checkpointing": False, "bf16": False, "packing": False}


@dataclasses.dataclass
class SftRun:
    """One method trained by TRL's SFTTrainer on the suite's raw rows: SFTTrainer tokenizes them,
    applies the adapter (``peft_config``) and builds the labels, the way its users train (issue 15).

    ``model`` and ``config`` are what SFTTrainer made: the config is read back from the model, since
    SFTTrainer adds ``trainable_token_indices`` and ``modules_to_save`` when a cloned chat template
    adds tokens."""

    trainer: Any
    model: Any
    config: Any
    result: TrainResult
    workdir: Any

    @classmethod
    def build(
        cls, model: Any, config: Any, data: Any, *, data_spec: Any, args: dict[str, Any], device: str,
        quantization: str, method: str,
    ) -> "SftRun":  # fmt: skip
        import copy

        from peftcheck.data import sft_rows
        from peftcheck.errors import MissingExtraError, SuiteError

        try:
            from trl import SFTConfig, SFTTrainer
        except ImportError:
            raise MissingExtraError("trl", "sft") from None
        if getattr(config, "backend", None) == "adapters":
            raise SuiteError("trainer 'sft' trains peft methods only", field=f"methods.{method}.trainer")
        if quantization != "none":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        result = TrainResult([], [], 0.0, 0, memory_mib(), memory_mib())
        workdir = tempfile.TemporaryDirectory(prefix="peftcheck-sft-")
        scope = data_spec.loss_scope
        defaults = {
            **_SFT_DEFAULTS, "output_dir": workdir.name, "logging_steps": 1, "save_strategy": "no",
            "report_to": [], "disable_tqdm": True, "use_cpu": device == "cpu", "dataloader_num_workers": 0,
            "max_length": data_spec.max_length, "completion_only_loss": scope == "completion_only",
            "assistant_only_loss": scope == "assistant_only", "dataset_text_field": "text",
        }  # fmt: skip
        try:
            trainer = SFTTrainer(
                model=model, args=SFTConfig(**{**defaults, **args}), train_dataset=sft_rows(data.raw_train, data_spec),
                processing_class=copy.deepcopy(data.tokenizer), peft_config=config,
            )  # fmt: skip
        except (ValueError, RuntimeError) as exc:  # TRL refuses a template without generation markers (PR #4201)
            workdir.cleanup()
            if scope == "assistant_only" and "generation" in str(exc):
                raise SuiteError(
                    f"SFTTrainer refused the chat template for assistant_only loss: {exc}", field="data.chat_template",
                    hint="give data.chat_template a template with a {% generation %} block around each assistant "
                    "turn, e.g. fixtures/smollm2_chat_generation.jinja",
                ) from None  # fmt: skip
            raise
        trainer.data_collator = _CountingCollator(trainer.data_collator, result)
        result.train_dataset = trainer.train_dataset
        peft_model = trainer.model
        effective = peft_model.peft_config[peft_model.active_adapter] if hasattr(peft_model, "peft_config") else config
        return cls(trainer, peft_model, effective, result, workdir)

    def train(self, *, step_hook: Callable[[int], Any] | None = None, progress: StepProgress | None = None) -> TrainResult:
        """Run SFTTrainer for ``max_steps``; the per-step loss is recorded as Trainer's is."""
        self.trainer.add_callback(_recorder(self.result, step_hook, progress))
        try:
            started = time.perf_counter()
            self.trainer.train()
            self.result.train_time_s = time.perf_counter() - started
        finally:
            self.workdir.cleanup()
        self.model.eval()
        return self.result
