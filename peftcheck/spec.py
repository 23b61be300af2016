"""Pydantic models of a suite file, and loading YAML with file- and line-located errors."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peftcheck.errors import SuiteError

__all__ = [
    "DataSpec",
    "TrainSpec",
    "MethodSpec",
    "SuiteSpec",
    "LoadedSuite",
    "parse_suite_text",
    "json_schema",
]

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# datasets' split syntax: name, optionally one slice with absolute or percent bounds.
_SPLIT = re.compile(r"^[A-Za-z_][\w.-]*(\[(-?\d+%?)?:(-?\d+%?)?\])?$")

Quantization = Literal["none", "int8", "nf4", "fp4"]
Dtype = Literal["float32", "bfloat16", "float16"]
# hf: transformers.Trainer on peftcheck's own tokenization; sft: TRL's SFTTrainer on the raw rows (issue 15)
TrainerName = Literal["hf", "sft"]
DataFormat = Literal["text", "prompt_completion", "messages"]
LossScope = Literal["all", "completion_only", "assistant_only"]
# An expectation: a check's parameters, `{}`/null for its defaults, or false to turn it off.
Expectations = dict[str, dict[str, Any] | bool | None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Which text the methods train and are evaluated on."""

    dataset: str = Field(description="Local file or folder, built-in fixture name, or hub id.")
    split: str = Field("train[:256]", description="Training split in datasets' slice syntax.")
    eval_split: str | None = Field(
        None, description="Held-out split for perplexity; should not overlap `split`."
    )
    text_field: str = Field("text", description="Column holding the text to train on (format text).")
    format: DataFormat = Field(
        "text", description="text: one text column; prompt_completion: a prompt and a completion column; "
        "messages: a list of chat messages rendered by the tokenizer's chat template."
    )
    prompt_field: str = Field("prompt", description="Column holding the prompt (format prompt_completion).")
    completion_field: str = Field(
        "completion", description="Column holding the completion (format prompt_completion)."
    )
    messages_field: str = Field(
        "messages", description="Column holding the list of {role, content} messages (format messages)."
    )
    loss: LossScope | None = Field(
        None, description="Which tokens the loss is on: all; completion_only (prompt_completion: the "
        "prompt is masked); assistant_only (messages: every non-assistant token is masked, needs a chat "
        "template with a {% generation %} block). Default: completion_only for prompt_completion "
        "(TRL's default), all otherwise.",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template file (relative to the suite) that replaces the "
        "tokenizer's, e.g. one with a {% generation %} block for assistant_only loss.",
    )
    max_length: int = Field(64, ge=8, le=8192, description="Tokens per example after truncation.")
    unrelated: str | None = Field(
        None,
        description="Dataset of text unrelated to the training slice, for the forgetting check.",
    )
    unrelated_split: str = Field("train[:64]", description="Split of `unrelated` to evaluate.")
    unrelated_text_field: str = Field("text", description="Column of `unrelated` holding text.")

    @field_validator("split", "eval_split", "unrelated_split")
    @classmethod
    def _split_syntax(cls, value: str | None) -> str | None:
        if value is not None and not _SPLIT.match(value.replace(" ", "")):
            raise ValueError(
                f"got {value!r}, not a datasets split such as 'train', 'train[:256]', "
                "'train[-64:]' or 'train[10%:20%]'"
            )
        return value

    @model_validator(mode="after")
    def _loss_fits_format(self) -> "DataSpec":
        wants = {"completion_only": "prompt_completion", "assistant_only": "messages"}
        if self.loss in wants and self.format != wants[self.loss]:
            raise ValueError(f"loss {self.loss!r} needs format {wants[self.loss]!r}; got format {self.format!r}")
        return self

    @property
    def loss_scope(self) -> str:
        """The loss scope with the default filled in."""
        return self.loss or ("completion_only" if self.format == "prompt_completion" else "all")


class TrainSpec(BaseModel):
    """A subset of transformers.TrainingArguments; other TrainingArguments names (and, for
    `trainer: sft`, SFTConfig names) are accepted."""

    model_config = ConfigDict(extra="allow")

    max_steps: int = Field(30, ge=1, description="Optimizer steps per method.")
    learning_rate: float = Field(2e-4, ge=0, description="Peak learning rate (0 freezes the adapter too).")
    per_device_train_batch_size: int = Field(4, ge=1, description="Examples per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    seed: int = Field(0, description="Seed for data order, dropout and adapter initialisation.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler_type: str = Field("constant", description="Learning-rate schedule name.")

    @model_validator(mode="after")
    def _known_training_arguments(self) -> "TrainSpec":
        # checked per method after loading, against the trainer each method uses (issue 15)
        return self


class MethodSpec(BaseModel):
    """One PEFT method: a peft config class by name plus its keyword arguments."""

    model_config = ConfigDict(extra="allow")

    peft: str | None = Field(
        None, description="peft config class name, e.g. LoraConfig (backend peft)."
    )
    backend: str = Field(
        "peft", description="Which library builds the adapter: a backend registered in peftcheck.methods "
        "(peft, adapters)."
    )
    config: str | None = Field(
        None, description="Adapter config name for backend 'adapters' (e.g. seq_bn, double_seq_bn)."
    )
    quantization: Quantization = Field("none", description="bitsandbytes quantization of the base.")
    trainer: TrainerName | None = Field(None, description="Overrides the suite's `trainer` for this method.")
    train: dict[str, Any] = Field(
        default_factory=dict, description="Per-method overrides of the suite's `train`."
    )
    expect: Expectations = Field(
        default_factory=dict,
        description="Per-method overrides of the suite's `expect`, merged field by field over the "
        "suite's entry for the same check (an `xfail:` alone keeps the suite's bounds); `false` "
        "turns a check off for this method.",
    )
    markers: list[str] = Field(default_factory=list, description="Extra pytest markers.")
    reference_for: list[str] = Field(
        default_factory=list,
        description="Methods this one is a comparison row for: where every one of them skips "
        "(an optional backend not installed), this method skips too instead of training for nobody.",
    )
    adapter: str | None = Field(
        None,
        description="Artifact mode (issue 15): a saved PEFT adapter folder (adapter_config.json + "
        "adapter_model.safetensors, from any trainer), relative to the suite file; it is loaded, not trained.",
    )
    merged: str | None = Field(
        None,
        description="With `adapter`: the folder of the same adapter merged into the base (an export), "
        "checked by adapter_integrity to give the adapter's logits.",
    )

    @field_validator("backend")
    @classmethod
    def _registered(cls, value: str) -> str:
        from peftcheck.methods import registered_backends  # the registry only: no adapter library

        if value not in registered_backends():
            raise ValueError(f"got {value!r}, not a backend; registered: {', '.join(registered_backends())}")
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> "MethodSpec":
        if self.adapter is not None:  # artifact mode: the folder's adapter_config.json is the config
            given = [k for k in ("peft", "config", "train") if getattr(self, k)] + sorted(self.kwargs)
            if given or self.backend != "peft":
                raise ValueError(
                    f"an artifact method (`adapter:`) takes its config from adapter_config.json and is not "
                    f"trained; remove {given or ['backend']}"
                )
            return self
        if self.merged is not None:
            raise ValueError("`merged:` checks a saved adapter: give `adapter: <folder>` too")
        if self.backend == "peft" and not self.peft:
            raise ValueError("a peft method needs `peft: <ConfigClassName>`, e.g. peft: LoraConfig")
        if self.backend == "adapters" and not self.config:
            raise ValueError("an adapters method needs `config:`, e.g. config: seq_bn")
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        """The config class's own keyword arguments (everything not a peftcheck field)."""
        return dict(self.model_extra or {})


class SuiteSpec(_Strict):
    """A whole suite file."""

    suite: str = Field(pattern=_ID, description="Suite id, used in test ids and records.")
    description: str = Field("", description="What the suite shows.")
    model: str | None = Field(
        None,
        description="Built-in (smollm2-135m, tiny-opt, tiny-llama, tiny-gpt2, tiny-gemma3, tiny-qwen3), path or "
        "hub id. Required unless every method is an artifact (`adapter:`) whose adapter_config.json names its "
        "base (base_model_name_or_path).",
    )
    dtype: Dtype = Field("float32", description="Dtype the base model is loaded in.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    trust_remote_code: bool = Field(False, description="Passed to transformers; off by default.")
    data: DataSpec
    trainer: TrainerName = Field(
        "hf", description="hf: transformers.Trainer; sft: TRL's SFTTrainer + SFTConfig (pip install peftcheck[sft])."
    )
    train: TrainSpec = Field(default_factory=TrainSpec)
    methods: dict[str, MethodSpec] = Field(min_length=1, description="Method name -> method.")
    expect: Expectations = Field(
        default_factory=dict,
        description="Check name -> bounds, for every method; a method's own `expect` entry "
        "overrides them field by field.",
    )
    markers: list[str] = Field(default_factory=list, description="pytest markers for every item.")

    @field_validator("methods")
    @classmethod
    def _method_ids(cls, value: dict[str, MethodSpec]) -> dict[str, MethodSpec]:
        for name in value:
            if not re.match(_ID, name):
                raise ValueError(f"method name {name!r} must match {_ID}")
        return value

    @field_validator("markers")
    @classmethod
    def _marker_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"marker {name!r} is not a Python identifier")
        return value

    def expectations(self, method: str) -> dict[str, dict[str, Any]]:
        """The checks of one method: the suite's, with the method's fields merged over them.

        A method's entry overrides field by field (an `xfail:` alone keeps the suite's bounds:
        issue 17, where a replacing override judged qlora by a default nobody wrote); `false`
        turns the check off for the method, `{}`/null adds it with the suite's fields or the
        defaults."""
        merged: dict[str, dict[str, Any]] = {}
        if self.methods[method].adapter is not None:  # on by default for a saved adapter (issue 15)
            merged["adapter_integrity"] = {}
        for source in (self.expect, self.methods[method].expect):
            for check, params in source.items():
                if params is False:
                    merged.pop(check, None)
                else:
                    fields = {} if params is True or params is None else params
                    merged[check] = {**merged.get(check, {}), **fields}
        return merged

    def trainer_of(self, method: str) -> str:
        """The trainer of one method: its own `trainer`, else the suite's."""
        return self.methods[method].trainer or self.trainer

    def train_args(self, method: str) -> dict[str, Any]:
        """The suite's training arguments with the method's overrides applied."""
        args = self.train.model_dump()
        args.update(self.methods[method].train)
        return args


class LoadedSuite(BaseModel):
    """A validated suite with where it came from, for error messages and test locations."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    spec: SuiteSpec
    path: str
    lines: dict[str, int] = Field(default_factory=dict, description="Dotted field -> YAML line.")

    def line_of(self, *parts: str | int) -> int | None:
        """Line of the deepest existing field along a path like ('methods', 'lora', 'r')."""
        for end in range(len(parts), 0, -1):
            key = ".".join(str(p) for p in parts[:end])
            if key in self.lines:
                return self.lines[key]
        return None

    @property
    def fingerprint_source(self) -> str:
        return json.dumps(self.spec.model_dump(mode="json"), sort_keys=True)


def _line_map(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None,
              seen: set[int] | None = None) -> dict[str, int]:
    """Dotted field -> line. An aliased node is walked once (aliases can nest exponentially)."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if id(node) in seen:
        return out
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            _line_map(value_node, key, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix}.{index}"
            out[key] = item.start_mark.line + 1
            _line_map(item, key, out, seen)
    return out


_MAX_ALIASES = 100  # a suite needs few; many nested aliases are a "billion laughs" input


def _check_aliases(text: str, path: str) -> None:
    aliases = sum(1 for event in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(event, yaml.AliasEvent))
    if aliases > _MAX_ALIASES:
        raise SuiteError(f"{aliases} YAML aliases; at most {_MAX_ALIASES} are accepted", file=path)


def _first_error(error: ValidationError) -> tuple[tuple[str | int, ...], str]:
    item = error.errors()[0]
    loc = tuple(p for p in item["loc"] if p not in ("function-after", "function-before"))
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("dict[", "bool"))))
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = "unknown key"
    elif item["type"] == "missing":
        message = "required key is missing"
    elif "input" in item and item["type"] not in ("value_error",):
        message = f"got {item['input']!r}, {message[0].lower()}{message[1:]}"
    return loc, message


def _hint_for(loc: tuple[str | int, ...], message: str) -> str | None:
    if message == "unknown key":
        return "run `peftcheck schema` for every key a suite accepts"
    return None


def parse_suite_text(text: str, *, path: str = "<string>") -> LoadedSuite:
    """Parse a suite from YAML text and validate its structure (the checks it names are validated
    by peftcheck.loader, which knows the check registry); every failure is a located SuiteError."""
    try:
        _check_aliases(text, path)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(f"invalid YAML: {problem}", file=path, line=line) from None
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        # PyYAML's constructors raise these on malformed tagged scalars (`!!int `, `0x_`,
        # `!!bool maybe`): yaml/pyyaml#933, #898
        raise SuiteError(f"invalid YAML: {type(exc).__name__}: {exc}", file=path) from None
    except RecursionError:
        raise SuiteError("invalid YAML: a recursive alias (an anchor used inside itself)", file=path) from None
    if not isinstance(data, dict):
        raise SuiteError(
            f"a suite is a mapping with keys suite, model, data, methods; got {type(data).__name__}",
            file=path,
            line=1,
        )
    lines = _line_map(node) if node is not None else {}
    methods = data.get("methods") if isinstance(data.get("methods"), dict) else {}
    if "model" not in data and not any(isinstance(m, dict) and "adapter" in m for m in methods.values()):
        # `model` is optional only for artifact methods (issue 15): reported first, as when it was required
        raise SuiteError("required key is missing", file=path, line=1, field="model")
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        loc, message = _first_error(exc)
        field = ".".join(str(p) for p in loc) or None
        line = 1  # a key missing at the top level: point at the start of the file
        for end in range(len(loc), 0, -1):
            if ".".join(str(p) for p in loc[:end]) in lines:
                line = lines[".".join(str(p) for p in loc[:end])]
                break
        raise SuiteError(
            message, file=path, line=line, field=field, hint=_hint_for(loc, message)
        ) from None
    loaded = LoadedSuite(spec=spec, path=path, lines=lines)
    _check_references(loaded)
    _check_train_fields(loaded)
    return loaded


def _check_references(loaded: LoadedSuite) -> None:
    methods = loaded.spec.methods
    for name, method in methods.items():
        wrong = [ref for ref in method.reference_for if ref not in methods or ref == name]
        if wrong:
            raise SuiteError(
                f"got {wrong}, reference_for names other methods of this suite: {sorted(set(methods) - {name})}",
                file=loaded.path, line=loaded.line_of("methods", name, "reference_for"),
                field=f"methods.{name}.reference_for",
            )  # fmt: skip


def _trainer_fields(trainer: str) -> set[str] | None:
    """Field names of TrainingArguments (hf) or SFTConfig (sft); None where the library is missing."""
    import dataclasses

    try:  # heavy: only consulted when a suite names training arguments beyond TrainSpec's
        if trainer == "sft":
            from trl import SFTConfig as cls
        else:
            from transformers import TrainingArguments as cls
    except ImportError:  # the ML or sft extra is missing: training says so with the install hint
        return None
    return {f.name for f in dataclasses.fields(cls)}


def _check_train_fields(loaded: LoadedSuite) -> None:
    """Every `train:` name (the suite's and each method's) is a field of that method's trainer."""
    spec = loaded.spec
    suite_extra = set(spec.train.model_extra or {})
    for name in spec.methods:
        trainer = spec.trainer_of(name)
        own = set(spec.methods[name].train) - set(TrainSpec.model_fields)
        if not (suite_extra | own):
            continue
        known = _trainer_fields(trainer)
        if known is None:
            continue
        for key in sorted(own - known):
            place = ("methods", name, "train", key)
            raise SuiteError(
                f"unknown {'SFTConfig' if trainer == 'sft' else 'TrainingArguments'} name", file=loaded.path,
                line=loaded.line_of(*place), field=".".join(place), hint=_close_hint(key, known),
            )  # fmt: skip
        for key in sorted(suite_extra - known):
            raise SuiteError(
                f"unknown {'SFTConfig' if trainer == 'sft' else 'TrainingArguments'} name (method {name!r} "
                f"trains with trainer {trainer!r})", file=loaded.path, line=loaded.line_of("train", key),
                field=f"train.{key}", hint=_close_hint(key, known),
            )  # fmt: skip


def _close_hint(key: str, known: set[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return f"did you mean {close[0]!r}?" if close else None


def json_schema() -> dict[str, Any]:
    """JSON Schema of a suite file, for editors."""
    schema = SuiteSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "peftcheck suite"
    return schema
