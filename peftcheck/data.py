"""Dataset resolution and slicing through `datasets`, tokenization and the collator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftcheck.errors import ResolveError, SuiteError

__all__ = [
    "resolve_dataset", "load_split", "tokenize", "tokenize_supervised", "suite_tokenizer", "sft_rows",
    "held_out_prompts", "collator",
]  # fmt: skip

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _data_file(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.suffix in _BUILDERS) if folder.is_dir() else []
    return files[0] if files else None


def resolve_dataset(ref: str, *, base_dir: Path | None = None) -> tuple[str, str]:
    """(builder, location): a local file or folder, a $PEFTCHECK_DATA_DIR mirror, or a hub id."""
    tried = []
    for path in [Path(ref)] + ([base_dir / ref] if base_dir is not None else []):
        if path.is_file() and path.suffix in _BUILDERS:
            return _BUILDERS[path.suffix], str(path)
        found = _data_file(path)
        if found is not None:
            return _BUILDERS[found.suffix], str(found)
        tried.append(f"local {path}")
    mirror = os.environ.get("PEFTCHECK_DATA_DIR")
    if mirror:
        for folder in (Path(mirror) / ref, Path(mirror) / ref.split("/")[-1]):
            found = _data_file(folder)
            if found is not None:
                return _BUILDERS[found.suffix], str(found)
        tried.append(f"$PEFTCHECK_DATA_DIR={mirror}")
    else:
        tried.append("$PEFTCHECK_DATA_DIR (unset; CI points it at ../shared/data)")
    from peftcheck.models import offline

    if "/" in ref and not offline():
        return "hub", ref
    tried.append("hub (offline)" if offline() else "hub (not a hub id)")
    raise ResolveError(f"dataset {ref!r} not found; tried: " + "; ".join(tried), field="data.dataset")


def load_split(ref: str, split: str, *, base_dir: Path | None = None, field: str = "data") -> Any:
    """One slice of a dataset, e.g. ``train[:256]``, as a datasets.Dataset."""
    import datasets

    builder, location = resolve_dataset(ref, base_dir=base_dir)
    datasets.disable_progress_bars()
    try:
        if builder == "hub":
            return datasets.load_dataset(location, split=split)
        # A local file is one split named 'train' whatever its name: map the slice onto it.
        name, _, rest = split.partition("[")
        sliced = "train" + ("[" + rest if rest else "")
        if name != "train":
            raise SuiteError(
                f"a local data file has one split, 'train'; got {split!r}", field=f"{field}.split"
            )
        return datasets.load_dataset(builder, data_files={"train": location}, split=sliced)
    except (ValueError, FileNotFoundError, ConnectionError) as exc:
        if isinstance(exc, SuiteError):
            raise
        raise ResolveError(f"cannot load {ref!r} split {split!r}: {exc}", field=f"{field}.dataset") from None


def tokenize(dataset: Any, tokenizer: Any, *, text_field: str, max_length: int, field: str = "data") -> Any:
    """Tokenized dataset with input_ids and attention_mask only."""
    if text_field not in dataset.column_names:
        raise SuiteError(
            f"got {text_field!r}, the dataset has columns {dataset.column_names}",
            field=f"{field}.text_field",
        )

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [str(t) for t in batch[text_field]]
        return tokenizer(texts, truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def _columns(dataset: Any, spec: Any, names: list[str], field: str) -> None:
    for name in names:
        if getattr(spec, name) not in dataset.column_names:
            raise SuiteError(
                f"got {getattr(spec, name)!r}, the dataset has columns {dataset.column_names}",
                field=f"{field}.{name}",
            )


def _fields(spec: Any) -> list[str]:
    return {"text": ["text_field"], "prompt_completion": ["prompt_field", "completion_field"],
            "messages": ["messages_field"]}[spec.format]  # fmt: skip


def suite_tokenizer(tokenizer: Any, spec: Any, *, base_dir: Path | None = None) -> Any:
    """The base's tokenizer, or a copy with ``data.chat_template`` in place of its template (the
    base, and so its tokenizer, is shared by every suite on that model)."""
    import copy

    if spec.chat_template is not None:
        path = Path(spec.chat_template)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            template = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SuiteError(f"cannot read chat template {str(path)!r}: {exc.strerror}", field="data.chat_template") from None
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = template
    if spec.format == "messages" and not getattr(tokenizer, "chat_template", None):
        raise SuiteError("format 'messages' needs a chat template; the tokenizer has none", field="data.format",
                         hint="give data.chat_template: a Jinja file")  # fmt: skip
    return tokenizer


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The conversation before its last assistant turn, ending in the generation prompt."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)


def tokenize_supervised(dataset: Any, tokenizer: Any, spec: Any, *, field: str = "data") -> Any:
    """input_ids, attention_mask and labels, with -100 on the tokens the loss leaves out: the
    prompt (completion_only, as TRL masks it: where the tokenized prompt and prompt+completion
    diverge; the completion ends in EOS, as TRL appends it), or every token outside the chat
    template's {% generation %} blocks (assistant_only, transformers' assistant mask: all zeros
    when the template has no such block, trl PR #4201, which label_masking catches)."""
    _columns(dataset, spec, _fields(spec), field)
    scope, limit = spec.loss_scope, spec.max_length
    eos = tokenizer.eos_token or ""

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        if spec.format == "prompt_completion":
            prompt, completion = str(row[spec.prompt_field]), str(row[spec.completion_field])
            if not completion.endswith(eos):
                completion += eos
            prompt_ids = tokenizer(prompt)["input_ids"]
            ids = tokenizer(prompt + completion)["input_ids"]
            keep = common_prefix(prompt_ids, ids) if scope == "completion_only" else 0
            labels = [-100] * keep + ids[keep:]
        else:
            out = tokenizer.apply_chat_template(
                row[spec.messages_field], tokenize=True, return_dict=True,
                return_assistant_tokens_mask=scope == "assistant_only",
            )  # fmt: skip
            ids = list(out["input_ids"])
            mask = out.get("assistant_masks") if scope == "assistant_only" else None
            labels = ids if mask is None else [t if m else -100 for t, m in zip(ids, mask)]
        ids, labels = ids[:limit], labels[:limit]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    return dataset.map(encode, remove_columns=dataset.column_names)


def encode_split(dataset: Any, tokenizer: Any, spec: Any, *, field: str = "data") -> Any:
    """The tokenized split for the hf trainer and perplexity: labels only where a format has them."""
    if spec.format == "text":
        return tokenize(dataset, tokenizer, text_field=spec.text_field, max_length=spec.max_length, field=field)
    return tokenize_supervised(dataset, tokenizer, spec, field=field)


def sft_rows(dataset: Any, spec: Any) -> Any:
    """The split with the column names TRL's SFTTrainer reads (text, prompt/completion, messages)."""
    names = {getattr(spec, f): trl for f, trl in (("text_field", "text"), ("prompt_field", "prompt"),
             ("completion_field", "completion"), ("messages_field", "messages")) if f in _fields(spec)}  # fmt: skip
    _columns(dataset, spec, _fields(spec), "data")
    dataset = dataset.select_columns(list(names))
    renames = {k: v for k, v in names.items() if k != v}
    return dataset.rename_columns(renames) if renames else dataset


def held_out_prompts(dataset: Any, tokenizer: Any, spec: Any, count: int) -> list[tuple[str, str]]:
    """(prompt, reference) pairs of a held-out split: the prompt column, or the conversation up
    to its last assistant turn rendered with the generation prompt; none for text data."""
    _columns(dataset, spec, _fields(spec), "data")
    pairs = []
    for row in dataset.select(range(min(count, len(dataset)))):
        if spec.format == "prompt_completion":
            pairs.append((str(row[spec.prompt_field]), str(row[spec.completion_field])))
        elif spec.format == "messages":
            messages = row[spec.messages_field]
            answer = [m for m in messages if m.get("role") == "assistant"]
            pairs.append((render_prompt(tokenizer, messages), str(answer[-1]["content"]) if answer else ""))
    return pairs


class _Collator:
    """Pads a batch; rows with labels keep them (padded with -100), rows without get input_ids
    as labels with padding masked (the causal-LM collator)."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq

        self.tokenizer = tokenizer
        self.plain = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        self.labelled = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if features and "labels" in features[0]:
            return self.labelled(features)
        return self.plain(features)


def collator(tokenizer: Any) -> Any:
    """Causal-LM collator: pads and copies input_ids to labels with padding masked out; rows that
    carry labels (prompt_completion, messages) keep theirs."""
    return _Collator(tokenizer)
