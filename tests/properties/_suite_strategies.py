"""Strategies for suite files: valid suites, suite-shaped documents with wrong parts, YAML text."""

from __future__ import annotations

import string
from typing import Any

import yaml
from hypothesis import strategies as st

from peftcheck.checks import CHECKS

# Words a suite uses, so generated documents reach past the first "unknown key" error.
SUITE_KEYS = (
    "suite", "description", "model", "dtype", "device", "trust_remote_code", "data", "train",
    "methods", "expect", "markers", "dataset", "split", "eval_split", "text_field", "max_length",
    "unrelated", "max_steps", "learning_rate", "seed", "peft", "backend", "config",
    "quantization", "r", "target_modules", "xfail", "reason", "when", "max", "min",
)

_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True)
_splits = st.sampled_from(["train", "train[:32]", "train[-8:]", "train[10%:20%]", "validation[:4]"])
_words = st.text(string.ascii_letters + "_", min_size=1, max_size=8)


def builtin_checks() -> list[str]:
    """Registered checks whose defaults validate (each may appear as ``name: {}``)."""
    # importing peftcheck.checks (above) registered the built-in checks
    names = []
    for name, check in sorted(CHECKS.items()):
        try:
            check.params.model_validate({})
        except ValueError:
            continue
        names.append(name)
    return names


def _method() -> st.SearchStrategy[dict[str, Any]]:
    lora = st.fixed_dictionaries(
        {"peft": st.just("LoraConfig"), "r": st.integers(1, 64)},
        optional={
            "target_modules": st.lists(st.sampled_from(["q_proj", "v_proj", "fc1"]), min_size=1, unique=True)
            | st.just("all-linear"),
            "lora_alpha": st.integers(1, 64),
            "quantization": st.sampled_from(["none", "int8", "nf4", "fp4"]),
            "markers": st.lists(st.sampled_from(["slow", "gpu"]), unique=True),
        },
    )
    prompt = st.fixed_dictionaries(
        {"peft": st.sampled_from(["PromptTuningConfig", "PrefixTuningConfig"]),
         "num_virtual_tokens": st.integers(1, 32)}
    )
    adapters = st.fixed_dictionaries({"backend": st.just("adapters"), "config": st.just("seq_bn")})
    return lora | prompt | adapters


def _expectations(checks: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    if not checks:
        return st.just({})
    return st.dictionaries(st.sampled_from(checks), st.sampled_from([{}, None, True, False]), max_size=3)


def valid_suites(checks: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Suites that must load: every field drawn from its valid values; expectations from ``checks``."""
    data = st.fixed_dictionaries(
        {"dataset": st.sampled_from(["fixtures/tiny_corpus.jsonl", "Abirate/english_quotes"])},
        optional={
            "split": _splits,
            "eval_split": _splits,
            "text_field": _words,
            "max_length": st.integers(8, 8192),
        },
    )
    train = st.fixed_dictionaries(
        {},
        optional={
            "max_steps": st.integers(1, 1000),
            "learning_rate": st.floats(1e-6, 1.0),
            "per_device_train_batch_size": st.integers(1, 16),
            "seed": st.integers(0, 2**31),
            "warmup_steps": st.integers(0, 10),
        },
    )
    return st.fixed_dictionaries(
        {
            "suite": _ids,
            "model": st.sampled_from(["tiny-opt", "tiny-llama", "smollm2-135m", "facebook/opt-6.7b"]),
            "data": data,
            "methods": st.dictionaries(_ids, _method(), min_size=1, max_size=3),
        },
        optional={
            # PyYAML folds the Unicode line breaks NEL/LS/PS inside a dumped scalar into a
            # space, so a description holding one cannot round-trip through YAML text
            "description": st.text(st.characters(exclude_characters="\x85\u2028\u2029"), max_size=20),
            "dtype": st.sampled_from(["float32", "bfloat16", "float16"]),
            "device": st.sampled_from(["auto", "cpu", "cuda"]),
            "trust_remote_code": st.booleans(),
            "train": train,
            "expect": _expectations(checks),
            "markers": st.lists(st.sampled_from(["slow", "gpu", "quant"]), unique=True),
        },
    )


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(SUITE_KEYS)
    | _splits
)
_keys = st.sampled_from(SUITE_KEYS) | st.text(max_size=6) | st.integers(-3, 3) | st.booleans() | st.none()


def yaml_values() -> st.SearchStrategy[Any]:
    """Any value YAML can hold: scalars (non-string keys too), lists and mappings, nested."""
    return st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
        max_leaves=10,
    )


def suite_shaped(checks: list[str]) -> st.SearchStrategy[Any]:
    """A valid suite with parts replaced, removed or added, or any YAML value at all."""
    def mutate(doc: dict[str, Any], edits: list[tuple[list[str], Any, bool]]) -> dict[str, Any]:
        for path, value, remove in edits:
            node: Any = doc
            for key in path[:-1]:
                if not isinstance(node, dict) or key not in node:
                    break
                node = node[key]
            else:
                if isinstance(node, dict):
                    if remove:
                        node.pop(path[-1], None)
                    else:
                        node[path[-1]] = value
        return doc

    paths = st.lists(st.sampled_from(SUITE_KEYS), min_size=1, max_size=3)
    edits = st.lists(st.tuples(paths, yaml_values(), st.booleans()), min_size=1, max_size=3)
    return st.builds(mutate, valid_suites(checks), edits) | yaml_values()


def dump(doc: Any) -> str:
    """YAML text of ``doc`` as a user might write it (block style, insertion order)."""
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# Pieces of YAML syntax, anchors and aliases included, for text that is not a dumped value.
_TOKENS = (
    "suite: s\n", "model: m\n", "data:\n", "  dataset: d\n", "methods:\n", "  lora: {peft: LoraConfig}\n",
    "- ", ": ", "{", "}", "[", "]", ", ", "\n", "  ", "&x ", "*x", "&y ", "*y", "!!str ", "!!int ",
    "? ", "'", '"', "#", "---\n", "...\n", "|\n", ">\n", "a", "1", "null", "~", "true", "<<: *x\n",
)


def yaml_texts(*, aliases: bool = True, tags: bool = True) -> st.SearchStrategy[str]:
    """Text assembled from YAML syntax pieces, plus arbitrary text.

    ``aliases=False`` leaves out ``*x``/``*y``/``<<`` (which can build a structure that contains
    itself); ``tags=False`` leaves out explicit tags (``!!int``) and the characters ``!`` and
    ``_`` from arbitrary text (``0x_`` is an int to PyYAML's resolver but not to ``int()``).
    """
    tokens = [t for t in _TOKENS if (aliases or "*" not in t) and (tags or "!!" not in t)]
    text = st.text(max_size=40)
    if not tags:
        text = st.text(st.characters(exclude_characters="!_"), max_size=40)
    return st.lists(st.sampled_from(tokens), max_size=24).map("".join) | text
