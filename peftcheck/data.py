"""Dataset resolution and slicing through `datasets`, tokenization and the collator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftcheck.errors import ResolveError, SuiteError

__all__ = ["resolve_dataset", "load_split", "tokenize", "collator"]

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


def collator(tokenizer: Any) -> Any:
    """Causal-LM collator: pads and copies input_ids to labels with padding masked out."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=False)
