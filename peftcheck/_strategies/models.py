"""Tiny base modules (MLP, embedding + linear, attention block, transformers decoders) as recipes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import nn

__all__ = [
    "TinyModel",
    "mlp_recipe",
    "mlps",
    "embedding_mlps",
    "attention_blocks",
    "tiny_decoders",
    "base_models",
]

InputKind = Literal["features", "sequence", "tokens"]


@dataclasses.dataclass(frozen=True, repr=False)
class TinyModel:
    """A recipe for a small base module; every ``build()`` returns a fresh, identical copy.

    Recipes rather than live modules, because peft wraps a module in place: a property that
    needs the untouched base next to the adapted model builds it twice.
    """

    name: str
    factory: Callable[[], nn.Module]
    seed: int
    input_kind: InputKind
    input_size: int
    """Features per position (``features``/``sequence``) or vocabulary size (``tokens``)."""
    linear_names: tuple[str, ...]
    """Module-name suffixes that each select only ``nn.Linear`` layers (``target_modules``)."""
    embedding_names: tuple[str, ...] = ()
    saveable_names: tuple[str, ...] = ()
    """Module names fit for ``modules_to_save`` (never a target, never tied to another)."""
    max_length: int = 6
    linears_have_bias: bool = True
    hidden_size: int | None = None
    """Set for transformers causal LMs: the token width prompt-learning methods need."""

    @property
    def is_causal_lm(self) -> bool:
        return self.hidden_size is not None

    def build(self, *, dtype: torch.dtype = torch.float32) -> nn.Module:
        """A fresh module with this recipe's weights, in ``dtype`` and eval mode."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = self.factory()
        return module.to(dtype).eval()

    def __repr__(self) -> str:
        return f"TinyModel({self.name!r}, seed={self.seed})"


class _MLP(nn.Module):
    """Linear layers ``fc0..fcN`` with ReLU, a LayerNorm ``norm`` and a Linear ``head``."""

    def __init__(self, sizes: tuple[int, ...], *, bias: bool) -> None:
        super().__init__()
        self.hidden = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-2], sizes[1:-1])
        )
        self.norm = nn.LayerNorm(sizes[-2])
        self.head = nn.Linear(sizes[-2], sizes[-1], bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(self.norm(x))


class _EmbeddingMLP(nn.Module):
    """Token embedding ``embed``, a Linear ``proj`` with tanh, and a Linear ``head``."""

    def __init__(self, vocab: int, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(self.embed(input_ids))))


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention: ``norm``, ``q_proj``/``k_proj``/``v_proj``, ``out_proj``."""

    def __init__(self, dim: int, heads: int, *, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (self._split(p(h)) for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mixed = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return x + self.out_proj(mixed.transpose(1, 2).reshape(x.shape))


_small = st.integers(min_value=4, max_value=32)


def mlps(*, max_depth: int = 3, bias: bool | None = None) -> SearchStrategy[TinyModel]:
    """MLPs of 1 to ``max_depth`` hidden Linear layers, widths 4-32; ``bias=None`` draws it."""
    if max_depth < 1:
        raise ValueError(f"max_depth={max_depth!r} must be >= 1")
    biases = st.booleans() if bias is None else st.just(bias)
    sizes = st.lists(_small, min_size=3, max_size=max_depth + 2).map(tuple)
    return st.builds(mlp_recipe, sizes, bias=biases, seed=_seeds())


def mlp_recipe(sizes: tuple[int, ...], *, bias: bool = True, seed: int = 0) -> TinyModel:
    """The recipe ``mlps()`` draws, for pinning an explicit ``@example``: widths in, hidden..., out."""
    if len(sizes) < 3:
        raise ValueError(f"sizes={sizes!r}: give input, at least one hidden and output widths")
    hidden = tuple(f"hidden.{i}" for i in range(len(sizes) - 2))
    return TinyModel(
        name=f"mlp{'-'.join(map(str, sizes))}{'' if bias else '/nobias'}",
        factory=lambda: _MLP(sizes, bias=bias),
        seed=seed,
        input_kind="features",
        input_size=sizes[0],
        linear_names=(*hidden, "head"),
        saveable_names=("norm", *hidden, "head"),
        linears_have_bias=bias,
    )


def embedding_mlps() -> SearchStrategy[TinyModel]:
    """An embedding (vocabulary 8-32) feeding two Linear layers; LoRA may target the embedding."""
    return st.builds(
        _embedding_recipe,
        st.integers(min_value=8, max_value=32),
        dim=_small,
        hidden=_small,
        out=_small,
        seed=_seeds(),
    )


def _embedding_recipe(vocab: int, *, dim: int, hidden: int, out: int, seed: int) -> TinyModel:
    return TinyModel(
        name=f"embedding{vocab}x{dim}-{hidden}-{out}",
        factory=lambda: _EmbeddingMLP(vocab, dim, hidden, out),
        seed=seed,
        input_kind="tokens",
        input_size=vocab,
        linear_names=("proj", "head"),
        embedding_names=("embed",),
        saveable_names=("proj", "head"),
    )


def attention_blocks(*, bias: bool | None = None) -> SearchStrategy[TinyModel]:
    """A pre-norm self-attention block with 1-4 heads of width 2-8 over a (batch, seq, dim) input."""
    biases = st.booleans() if bias is None else st.just(bias)
    return st.builds(_attention_recipe, _head_shapes(), bias=biases, seed=_seeds())


def _head_shapes() -> SearchStrategy[tuple[int, int]]:
    # (heads, head_dim) with a width of at least 4: a LayerNorm over 2 features maps every
    # input to ±(1, -1), so two positions would often be identical and attention blind to q/k.
    return st.sampled_from([(h, d) for h in (1, 2, 4) for d in (2, 4, 8) if 4 <= h * d <= 32])


def _attention_recipe(shape: tuple[int, int], *, bias: bool, seed: int) -> TinyModel:
    heads, head_dim = shape
    dim = heads * head_dim
    names = ("q_proj", "k_proj", "v_proj", "out_proj")
    return TinyModel(
        name=f"attention{heads}x{head_dim}{'' if bias else '/nobias'}",
        factory=lambda: _AttentionBlock(dim, heads, bias=bias),
        seed=seed,
        input_kind="sequence",
        input_size=dim,
        linear_names=names,
        saveable_names=("norm", *names),
        linears_have_bias=bias,
    )


_DECODERS = {
    "opt": (
        ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        ("model.decoder.final_layer_norm",),
        True,
    ),
    "llama": (
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ("model.norm",),
        False,
    ),
}


def tiny_decoders(*, architectures: tuple[str, ...] = ("opt", "llama")) -> SearchStrategy[TinyModel]:
    """Causal LMs built by transformers from an OPTConfig/LlamaConfig with random tiny sizes."""
    unknown = sorted(set(architectures) - set(_DECODERS))
    if unknown or not architectures:
        raise ValueError(f"architectures={architectures!r}: choose from {sorted(_DECODERS)}")
    return st.builds(
        _decoder_recipe,
        st.sampled_from(architectures),
        shape=_head_shapes(),
        layers=st.integers(min_value=1, max_value=2),
        vocab=st.integers(min_value=16, max_value=64),
        ffn=_small,
        seed=_seeds(),
    )


def _decoder_recipe(
    arch: str, *, shape: tuple[int, int], layers: int, vocab: int, ffn: int, seed: int
) -> TinyModel:
    heads, head_dim = shape
    targets, saveable, bias = _DECODERS[arch]
    hidden = heads * head_dim
    return TinyModel(
        name=f"{arch}{layers}L-h{hidden}x{heads}-ffn{ffn}-v{vocab}",
        factory=lambda: _build_decoder(arch, hidden, heads, layers, vocab, ffn),
        seed=seed,
        input_kind="tokens",
        input_size=vocab,
        linear_names=targets,
        saveable_names=saveable,
        linears_have_bias=bias,
        hidden_size=hidden,
    )


def _build_decoder(arch: str, hidden: int, heads: int, layers: int, vocab: int, ffn: int) -> nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "opt":
        config = OPTConfig(**common, ffn_dim=ffn, word_embed_proj_dim=hidden, dropout=0.0)
    else:
        config = LlamaConfig(**common, intermediate_size=ffn, num_key_value_heads=heads)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def base_models(*, decoders: bool = True) -> SearchStrategy[TinyModel]:
    """Any tiny base module; the (slower) transformers decoders unless ``decoders=False``."""
    options = [mlps(), embedding_mlps(), attention_blocks()]
    if decoders:
        options.append(tiny_decoders())
    return st.one_of(options)


def _seeds() -> SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**16)
