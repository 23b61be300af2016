"""What peftcheck knows about each peft type, one row per config class (issue 13).

A row says how the method saves, whether its init rewrites the base or starts at it, whether it
merges, unmerges, safe-merges, trains under gradient checkpointing and combines by
concatenation, with where the fact comes from. A config class without a row gets ``Facts()``:
no promise peftcheck knows of, every operation tried (peft raises where it cannot).
"""

from __future__ import annotations

import dataclasses

__all__ = ["Facts", "FACTS", "facts_of"]


@dataclasses.dataclass(frozen=True)
class Facts:
    init_field: str | None = None  # the field choosing the init; at peft's default the untrained adapter is the base
    identity: str | None = None  # no init field: starts at the base by construction (why)
    residual_inits: tuple[str, ...] = ()  # init values that rewrite the base, W -> W - B·A
    off_base_inits: tuple[tuple[str, str], ...] = ()  # init value -> why it starts off the base by design
    no_merge: str | None = None
    no_unmerge: str | None = None
    no_safe_merge: str | None = None
    merge_needs_bias: bool = False  # merges only into layers that have a bias
    no_checkpointing: str | None = None
    weighted_cat: bool = False  # add_weighted_adapter(..., combination_type="cat")
    step_hook: str | None = None  # the tuner method to call after every optimizer step
    total_step_from_run: bool = False  # the schedule spans the run: total_step defaults to max_steps
    no_use_cache: bool = False  # refuses a base whose config has use_cache
    suffix_target: bool = False  # target_modules names one module, matched as a suffix, not a regex
    wrapper_class: str | None = None  # replaces the target module whole, holding it as ``.model``
    saves: str = "each trainable tensor under its live name without the adapter name"


_PROMPT_TABLE = "one prompt_embeddings table, the virtual tokens the encoder produces (not the encoder)"
# init_weights=True starts at the base (measured on tiny-llama in suites/sweep.yaml: untrained vs base <= 2.4e-07)
_AT_BASE = Facts(init_field="init_weights")

FACTS: dict[str, Facts] = {
    # B = 0 at init (peft docs, LoRA); PiSSA/OLoRA/CorDA factor W and leave W - B·A as the base
    # (peft's lora/layer.py pissa_init/olora_init/corda_init); LoftQ starts A, B at the
    # quantization residual; DoRA's magnitude is saved without ".weight" (lora/model.py)
    "LoraConfig": Facts(
        init_field="init_lora_weights", residual_inits=("pissa", "olora", "corda"),
        off_base_inits=(("loftq", "LoftQ starts A and B at the quantization residual: the untrained adapter "
                                  "approximates the float weights, not the quantized base"),),
        weighted_cat=True, saves="lora_A/lora_B under their names; DoRA's magnitude as lora_magnitude_vector",
    ),
    # E = 0 at init; the rank budget is reallocated by update_and_allocate after each step, which
    # Trainer does not call (peft's adalora docs); ranks are saved pruned to rank_pattern's masks
    "AdaLoraConfig": Facts(init_field="init_lora_weights", step_hook="update_and_allocate", total_step_from_run=True,
                           saves="lora_A/E/B pruned to the ranks rank_pattern keeps"),
    "IA3Config": Facts(init_field="init_ia3_weights"),  # the scaling vectors start at 1
    "LoHaConfig": Facts(init_field="init_weights"),  # w2_b = 0
    "LoKrConfig": Facts(init_field="init_weights"),  # w1 = 0
    # peft's layers raise NotImplementedError on merge (lily/layer.py; ShadowPEFT is input dependent)
    "LilyConfig": dataclasses.replace(_AT_BASE, no_merge="Lily's layers raise NotImplementedError on merge/unmerge "
                                                          "(peft/tuners/lily/layer.py)"),
    "ShadowConfig": dataclasses.replace(_AT_BASE, no_merge="ShadowPEFT is an input-dependent layer-space "
                                                           "trajectory, not a weight delta: peft cannot merge it",
                                        saves="keys keep the adapter name"),
    "OSFConfig": dataclasses.replace(_AT_BASE, no_unmerge="OSF models do not support unmerging "
                                                          "(OSFModel.unmerge_adapter raises NotImplementedError)"),
    # trains a bias for every target; peft warns at get_peft_model it cannot merge where the layer has none
    "BeftConfig": dataclasses.replace(_AT_BASE, merge_needs_bias=True),
    # LN tuning merges by swapping in its tuned copy (ln_tuning/layer.py): safe_merge is ignored
    "LNTuningConfig": Facts(identity="by design: the tuned norm layers start as copies of the base's",
                            no_safe_merge="LN tuning merges by swapping in its tuned copy, no arithmetic: "
                                          "peft ignores safe_merge (ln_tuning/layer.py)"),
    # AdaptedAttention replaces the attention module whole with a zero-initialised gate (adaption_prompt/layer.py)
    "AdaptionPromptConfig": Facts(identity="by design: the adaption gate starts at zero", suffix_target=True,
                                  wrapper_class="AdaptedAttention"),
    # a key/value prefix, which recomputation extends a second time (peft#869; peft PR #2191 refuses it)
    "PrefixTuningConfig": Facts(no_checkpointing="PrefixTuningConfig feeds a key/value prefix, which gradient "
                                "checkpointing cannot recompute: a recomputed layer extends its prefix cache "
                                "twice (peft#869)", saves=_PROMPT_TABLE),
    "CartridgeConfig": Facts(no_checkpointing="CartridgeConfig feeds a key/value prefix, which gradient "
                             "checkpointing cannot recompute: a recomputed layer extends its prefix cache twice "
                             "(peft#869)"),
    "PromptTuningConfig": Facts(saves=_PROMPT_TABLE),
    "PromptEncoderConfig": Facts(saves=_PROMPT_TABLE),
    # its scaling pass runs the model twice and refuses a base with use_cache (xlora/model.py)
    "XLoraConfig": Facts(no_use_cache=True),
    "VBLoRAConfig": Facts(saves="the shared vector bank once, as base_model.vblora_vector_bank"),
    "RandLoraConfig": dataclasses.replace(_AT_BASE, saves="its random bases too, by design"),
    **{kind: _AT_BASE for kind in (
        "BOFTConfig", "DeftConfig", "DeloraConfig", "FrodConfig", "GloraConfig", "GraloraConfig", "HiraConfig",
        "HRAConfig", "MissConfig", "OFTConfig", "PeanutConfig", "PsoftConfig", "PveraConfig", "RoadConfig",
        "ShiraConfig", "SupertuningConfig", "TinyLoraConfig", "TrainableTokensConfig", "VeraConfig", "WaveFTConfig",
    )},
}  # fmt: skip


def facts_of(config: object) -> Facts:
    return FACTS.get(type(config).__name__, Facts())
