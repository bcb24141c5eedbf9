"""What each container's NeMo scripts accept: the stand-in's own table, kept apart from the renderer's.

Written from NVIDIA/NeMo sources (``git show <commit>:<file>``), not from
``peftpipe/engines/nemo/profiles.py``; a test asserts that the two share no objects. Commits:

    24.03  2874086783  branch chcui/conversion_precision_on_24.03 (fork of main at 9d86acd5eb)
    24.05  265bd739c7  tag v2.0.0rc0
    24.07  579983fbfc  tag r2.0.0rc1
    24.09  e938df327c  tag v2.0.0

Converter entries are the ``parser.add_argument`` calls of each script; Hydra config keys are the
flattened YAML (config_keys_2403.py) plus the differences listed here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tests.nemo_standin import config_keys_2403

CONV = "scripts/checkpoint_converters/"
FINETUNE_SCRIPT = "examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
GENERATE_SCRIPT = "examples/nlp/language_modeling/tuning/megatron_gpt_generate.py"


@dataclass(frozen=True)
class Arg:
    """One argparse argument: ``kind`` is value, store_true or bool (``type=bool``)."""

    flags: tuple[str, ...]
    kind: str = "value"
    required: bool = False
    choices: tuple[str, ...] | None = None
    default: object = None

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip("-").replace("-", "_")


IN = Arg(("--input_name_or_path",), required=True)
OUT = Arg(("--output_path",), required=True)
IN_OPTIONAL = Arg(("--input_name_or_path",))      # gemma: no required=True
OUT_OPTIONAL = Arg(("--output_path",))
HPARAMS = Arg(("--hparams_file",))
TOKENIZER = Arg(("--tokenizer_path",))
BF16_OR_32 = Arg(("--precision",), choices=("bf16", "32"), default="bf16")

# --- converters at 2874086783 (24.03) ------------------------------------------------------------
CONVERTERS_2403: dict[str, list[Arg]] = {
    # convert_llama_hf_to_nemo.py l.46-59
    CONV + "convert_llama_hf_to_nemo.py": [IN, OUT, HPARAMS, Arg(("--precision",), default="16")],
    # convert_mistral_7b_hf_to_nemo.py l.49-57
    CONV + "convert_mistral_7b_hf_to_nemo.py": [IN, OUT, Arg(("--precision",), default="32")],
    # convert_mixtral_hf_to_nemo.py l.49-53
    CONV + "convert_mixtral_hf_to_nemo.py": [IN, OUT, Arg(("--precision",), default="32")],
    # convert_gemma_hf_to_nemo.py l.184-196
    CONV + "convert_gemma_hf_to_nemo.py": [IN_OPTIONAL, TOKENIZER, HPARAMS, OUT_OPTIONAL, BF16_OR_32],
    # convert_falcon_hf_to_nemo.py l.119-138
    CONV + "convert_falcon_hf_to_nemo.py": [IN, OUT, HPARAMS, BF16_OR_32, Arg(("--cuda",), "store_true")],
    # convert_starcoder_hf_to_nemo.py l.100-119
    CONV + "convert_starcoder_hf_to_nemo.py": [IN, OUT, HPARAMS, BF16_OR_32, Arg(("--cuda",), "store_true")],
    # convert_starcoder2_hf_to_nemo.py l.49-57
    CONV + "convert_starcoder2_hf_to_nemo.py": [IN, OUT, Arg(("--precision",), default="32")],
}

CONVERTERS_2405 = {
    **CONVERTERS_2403,
    # 265bd739c7 convert_mixtral_hf_to_nemo.py l.52-59: choices valid_precision_values (l.56), --low-ram, --tmp-dir
    CONV + "convert_mixtral_hf_to_nemo.py": [
        IN, OUT, Arg(("--precision",), choices=("16", "bf16", "16-mixed", "bf16-mixed", "32"), default="32"),
        Arg(("--low-ram",), "store_true"), Arg(("--tmp-dir",), default="/tmp/mixtral_ckpt_parts/")],
}

CONVERTERS_2407 = {
    **CONVERTERS_2405,
    # 579983fbfc convert_mistral_7b_hf_to_nemo.py l.57: default bf16
    CONV + "convert_mistral_7b_hf_to_nemo.py": [IN, OUT, Arg(("--precision",), default="bf16")],
    # 579983fbfc convert_mixtral_hf_to_nemo.py l.61: default bf16
    CONV + "convert_mixtral_hf_to_nemo.py": [
        IN, OUT, Arg(("--precision",), choices=("16", "bf16", "16-mixed", "bf16-mixed", "32"), default="bf16"),
        Arg(("--low-ram",), "store_true"), Arg(("--tmp-dir",), default="/tmp/mixtral_ckpt_parts/")],
    # 579983fbfc convert_gemma2_hf_to_nemo.py l.210-226
    CONV + "convert_gemma2_hf_to_nemo.py": [IN_OPTIONAL, TOKENIZER, HPARAMS, OUT_OPTIONAL, BF16_OR_32,
                                            Arg(("--run_verification",), "store_true"), Arg(("--cpu",), "store_true")],
    # 579983fbfc convert_qwen2_hf_to_nemo.py l.46-63
    CONV + "convert_qwen2_hf_to_nemo.py": [IN, OUT, HPARAMS, Arg(("--precision",), default="16")],
}

CONVERTERS_2409 = {
    **CONVERTERS_2407,
    # e938df327c convert_llama_hf_to_nemo.py l.48-72: --llama31 type=bool default=True
    CONV + "convert_llama_hf_to_nemo.py": [IN, OUT, HPARAMS, Arg(("--llama31",), "bool", default=True),
                                           Arg(("--precision",), default="16")],
    # e938df327c convert_mistral_7b_hf_to_nemo.py l.50-60
    CONV + "convert_mistral_7b_hf_to_nemo.py": [IN, OUT, Arg(("--precision",), default="bf16"),
                                                Arg(("--low-ram", "--low-mem"), "store_true"),
                                                Arg(("--tmp-dir",), default="/tmp/mistral_ckpt_parts/")],
    # e938df327c convert_mixtral_hf_to_nemo.py l.61: valid_precision_values without 32
    CONV + "convert_mixtral_hf_to_nemo.py": [
        IN, OUT, Arg(("--precision",), choices=("16", "bf16", "16-mixed", "bf16-mixed"), default="bf16"),
        Arg(("--low-ram",), "store_true"), Arg(("--tmp-dir",), default="/tmp/mixtral_ckpt_parts/")],
}

CONVERTERS = {"24.03": CONVERTERS_2403, "24.05": CONVERTERS_2405, "24.07": CONVERTERS_2407, "24.09": CONVERTERS_2409}

# Converters whose bf16 falls back to fp16 without a bf16-capable GPU ("BF16 is not supported on
# this device. Using FP16 instead."): convert_llama l.114-117, mistral_7b l.157-160, mixtral
# l.158-161, starcoder2 l.158-161 at 2874086783 (qwen2 l.111-114 at 579983fbfc).
FP16_FALLBACK = ("llama", "mistral_7b", "mixtral", "starcoder2", "qwen2")
# convert_gemma_hf_to_nemo.py l.229-236 at 2874086783: verification with .cuda(), unconditional.
NEEDS_CUDA = ("gemma",)

# --- PEFT schemes: PEFT_CONFIG_MAP in nemo/collections/nlp/parts/peft_config.py ------------------
PEFT_SCHEMES = {
    "24.03": ("adapter", "ia3", "ptuning", "lora", "selective", "none", "sdlora"),  # l.322-331
    "24.05": ("adapter", "ia3", "ptuning", "lora", "selective", "none", "sdlora"),  # 265bd739c7 l.358-367
    "24.07": ("adapter", "ia3", "ptuning", "lora", "qlora", "selective", "none", "sdlora"),  # 579983fbfc l.399-409
    "24.09": ("adapter", "ia3", "ptuning", "lora", "mlp_head", "qlora", "selective", "none", "sdlora"),  # l.416-427
}
# PEFT_MODULE_MAP values (peft_config.py l.45-53 at 2874086783); anything else: logging.error + exit(1).
LORA_TARGETS = ("attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2", "attention", "mlp", "all")

# --- Hydra configs -------------------------------------------------------------------------------
_GLOBAL_SAMPLE_MAPPING = {f"model.data.{ds}.global_sample_mapping": False
                          for ds in ("train_ds", "validation_ds", "test_ds")}


def finetune_keys(profile: str) -> dict[str, object]:
    keys = copy.deepcopy(config_keys_2403.FINETUNE)
    if profile != "24.03":
        # 265bd739c7 megatron_gpt_finetuning_config.yaml l.104-105: variant added, targets narrowed.
        keys["model.peft.lora_tuning.variant"] = "nemo"
        keys["model.peft.lora_tuning.target_modules"] = ["attention_qkv"]
    if profile == "24.09":
        # e938df327c megatron_gpt_finetuning_config.yaml l.161, l.185, l.213.
        keys.update(_GLOBAL_SAMPLE_MAPPING)
    return keys


def generate_keys(profile: str) -> dict[str, object]:
    keys = copy.deepcopy(config_keys_2403.GENERATE)
    if profile != "24.03":
        # 265bd739c7 megatron_gpt_generate_config.yaml l.92 (variant) and l.148 (repetition_penalty 1.0).
        keys["model.peft.lora_tuning.variant"] = "nemo"
        keys["inference.repetition_penalty"] = 1.0
    return keys


PROFILES = tuple(CONVERTERS)
