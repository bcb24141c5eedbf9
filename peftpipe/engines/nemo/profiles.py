"""Container profiles: what each NeMo container's 1.x scripts accept, read from NeMo's sources.

Every entry names the NVIDIA/NeMo commit it was read from (``git show <commit>:<file>``) and
the file and lines. Which commit a container holds:

- 24.03: no NeMo release; the branches ``chcui/conversion_precision_on_24.03`` and
  ``chsieh/aquarium-v24.03.01`` both fork from main at 9d86acd5eb (2024-03-29, package version
  1.23.0rc0). Files were read at the first branch's head 2874086783, which only adds gemma and
  bert conversion fixes on top. The link is inferred from the branch names (unconfirmed).
- 24.05: NeMo 2.0.0rc0, tag v2.0.0rc0 = 265bd739c7.
- 24.07: NeMo 2.0.0rc1, tag r2.0.0rc1 = 579983fbfc.
- 24.09: NeMo 2.0.0, tag v2.0.0 = e938df327c. The last container line documented with the
  1.x scripts; later containers still ship them (r2.5.0 has megatron_gpt_finetuning.py) but
  which ones still run them is unconfirmed, so they have no profile.

The container-to-version mapping for 24.05-24.09 is docs.nvidia.com
``nemo-framework/user-guide/24.09/softwarecomponentversions.html``. Inside the containers the
repository is checked out at ``/opt/NeMo``.

Tests check renders against an expectations table of their own (tests/nemo_standin/), written
separately from this one; the two must not share objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CONVERTER_DIR = "scripts/checkpoint_converters"
FINETUNE_SCRIPT = "examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py"
GENERATE_SCRIPT = "examples/nlp/language_modeling/tuning/megatron_gpt_generate.py"
FINETUNE_CONFIG = "examples/nlp/language_modeling/tuning/conf/megatron_gpt_finetuning_config.yaml"
GENERATE_CONFIG = "examples/nlp/language_modeling/tuning/conf/megatron_gpt_generate_config.yaml"
PEFT_CONFIG = "nemo/collections/nlp/parts/peft_config.py"

# Values the converters turn into a precision: "16"/"32" become ints, "bf16" is kept only where
# torch.cuda.is_bf16_supported() (else fp16, see cpu_bf16_becomes_fp16); anything else is
# passed through unchecked (convert_llama_hf_to_nemo.py at 2874086783, l.110-120).
FREE_PRECISIONS = ("16", "bf16", "32")


@dataclass(frozen=True)
class Converter:
    """One HF -> .nemo converter script as a profile's commit declares it."""

    name: str
    script: str
    flags: tuple[str, ...]
    precisions: tuple[str, ...]
    default_precision: str
    source: str
    cpu_bf16_becomes_fp16: bool = True
    needs_cuda: bool = False
    tokenizer_path: bool = False
    llama31: bool = False
    notes: tuple[str, ...] = ()

    @property
    def flag_names(self) -> set[str]:
        return set(self.flags)


@dataclass(frozen=True)
class Profile:
    """What one container's NeMo 1.x scripts accept, and the defaults that bite."""

    name: str
    nemo_version: str
    commit: str
    ref: str
    converters: dict[str, Converter]
    peft_schemes: tuple[str, ...]
    lora_default_targets: tuple[str, ...]
    repetition_penalty: float
    llama_rope_types: tuple[str, ...]
    llama_auto_tokenizer: bool
    mistral_needs_sliding_window: bool
    struct_keys_added: tuple[str, ...] = ()
    root: str = "/opt/NeMo"
    finetune_script: str = FINETUNE_SCRIPT
    generate_script: str = GENERATE_SCRIPT
    sources: dict[str, str] = field(default_factory=dict)

    def script_path(self, relative: str, root: str | None = None) -> str:
        """``relative`` inside the NeMo checkout (``/opt/NeMo`` in NVIDIA's containers)."""
        return f"{(root or self.root).rstrip('/')}/{relative}"

    @property
    def defaults(self) -> dict[str, object]:
        """Config defaults that silently change a run when left out; the renderer sets each one."""
        return {
            "trainer.precision": 16,
            "model.peft.peft_scheme": "adapter",
            "model.peft.lora_tuning.target_modules": list(self.lora_default_targets),
            "target_modules when the key is absent": ["attention_qkv"],
            "trainer.max_steps": 20000,
            "trainer.val_check_interval": 200,
            "model.global_batch_size": 128,
            "model.micro_batch_size": 4,
            "model.data.train_ds.max_seq_length": 2048,
            "model.data.train_ds.prompt_template": "{input} {output}",
            "model.data.train_ds.index_mapping_dir": None,
            "exp_manager.resume_if_exists": True,
            "exp_manager.create_early_stopping_callback": True,
            "generate: model.data.test_ds.write_predictions_to_file": False,
            "generate: model.data.test_ds.metric.name": "loss",
            "generate: model.data.test_ds.tokens_to_generate": 32,
            "generate: inference.greedy": True,
            "generate: inference.repetition_penalty": self.repetition_penalty,
        }


def _llama(commit: str, lines: str, llama31: bool = False) -> Converter:
    flags = ["--input_name_or_path", "--output_path", "--hparams_file", "--precision"]
    notes = ["from_pretrained without torch_dtype: the HF model is loaded in fp32 on the host"]
    if llama31:
        flags.insert(3, "--llama31")
        notes.append("--llama31 is type=bool with default True: Llama-3.1 RoPE scaling is on unless the flag is"
                     " given an empty value (--llama31=); any other string, 'False' included, is True")
    return Converter("llama", f"{CONVERTER_DIR}/convert_llama_hf_to_nemo.py", tuple(flags), FREE_PRECISIONS, "16",
                     f"{CONVERTER_DIR}/convert_llama_hf_to_nemo.py@{commit} {lines}", llama31=llama31,
                     notes=tuple(notes))


def _mistral(commit: str, lines: str, default: str, low_ram: bool = False) -> Converter:
    flags = ("--input_name_or_path", "--output_path", "--precision") + (("--low-ram", "--low-mem", "--tmp-dir")
                                                                        if low_ram else ())
    return Converter("mistral_7b", f"{CONVERTER_DIR}/convert_mistral_7b_hf_to_nemo.py", flags, FREE_PRECISIONS,
                     default, f"{CONVERTER_DIR}/convert_mistral_7b_hf_to_nemo.py@{commit} {lines}",
                     notes=("reads tokenizer.model from the model directory (sentencepiece)",))


def _mixtral(commit: str, lines: str, precisions: tuple[str, ...], default: str, extra: tuple[str, ...]) -> Converter:
    return Converter("mixtral", f"{CONVERTER_DIR}/convert_mixtral_hf_to_nemo.py",
                     ("--input_name_or_path", "--output_path", "--precision", *extra), precisions, default,
                     f"{CONVERTER_DIR}/convert_mixtral_hf_to_nemo.py@{commit} {lines}")


def _gemma(commit: str, lines: str) -> Converter:
    # No --cpu flag before gemma2: the script always checks HF against NeMo logits with .cuda().
    return Converter("gemma", f"{CONVERTER_DIR}/convert_gemma_hf_to_nemo.py",
                     ("--input_name_or_path", "--tokenizer_path", "--hparams_file", "--output_path", "--precision"),
                     ("bf16", "32"), "bf16", f"{CONVERTER_DIR}/convert_gemma_hf_to_nemo.py@{commit} {lines}",
                     cpu_bf16_becomes_fp16=False, needs_cuda=True, tokenizer_path=True,
                     notes=("--precision choices are bf16 and 32 only", "--tokenizer_path is not required by argparse"
                            " but goes straight into model.tokenizer.model: pass the sentencepiece tokenizer.model",
                            "runs an HF-vs-NeMo logits check on CUDA before saving: needs a GPU"))


def _gemma2(commit: str) -> Converter:
    return Converter("gemma2", f"{CONVERTER_DIR}/convert_gemma2_hf_to_nemo.py",
                     ("--input_name_or_path", "--tokenizer_path", "--hparams_file", "--output_path", "--precision",
                      "--run_verification", "--cpu"), ("bf16", "32"), "bf16",
                     f"{CONVERTER_DIR}/convert_gemma2_hf_to_nemo.py@{commit} l.210-226",
                     cpu_bf16_becomes_fp16=False, tokenizer_path=True,
                     notes=("--cpu builds the trainer on CPU (l.286); without it the trainer wants a GPU",))


def _qwen2(commit: str) -> Converter:
    return Converter("qwen2", f"{CONVERTER_DIR}/convert_qwen2_hf_to_nemo.py",
                     ("--input_name_or_path", "--output_path", "--hparams_file", "--precision"), FREE_PRECISIONS, "16",
                     f"{CONVERTER_DIR}/convert_qwen2_hf_to_nemo.py@{commit} l.46-63")


def _cuda_flag(name: str, script: str, commit: str, lines: str) -> Converter:
    # falcon and starcoder hand --precision to the Lightning trainer as given: no bf16 -> fp16 fallback.
    return Converter(name, f"{CONVERTER_DIR}/{script}",
                     ("--input_name_or_path", "--output_path", "--hparams_file", "--precision", "--cuda"),
                     ("bf16", "32"), "bf16", f"{CONVERTER_DIR}/{script}@{commit} {lines}", cpu_bf16_becomes_fp16=False,
                     notes=("--precision choices are bf16 and 32 only",))


def _starcoder2(commit: str) -> Converter:
    return Converter("starcoder2", f"{CONVERTER_DIR}/convert_starcoder2_hf_to_nemo.py",
                     ("--input_name_or_path", "--output_path", "--precision"), FREE_PRECISIONS, "32",
                     f"{CONVERTER_DIR}/convert_starcoder2_hf_to_nemo.py@{commit} l.49-57")


def _common(commit: str) -> dict[str, Converter]:
    return {
        "gemma": _gemma(commit, "l.184-196"),
        "falcon": _cuda_flag("falcon", "convert_falcon_hf_to_nemo.py", commit, "l.119-138"),
        "starcoder": _cuda_flag("starcoder", "convert_starcoder_hf_to_nemo.py", commit, "l.100-119"),
        "starcoder2": _starcoder2(commit),
    }


PEFT_1X = ("adapter", "ia3", "ptuning", "lora", "selective", "sdlora", "none")
ALL_LORA_TARGETS = ("attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2")


def _sources(commit: str, peft_lines: str, target_line: str, penalty_line: str) -> dict[str, str]:
    return {
        "finetune script": f"{FINETUNE_SCRIPT}@{commit}",
        "finetune config": f"{FINETUNE_CONFIG}@{commit} (precision l.7, max_steps l.12, resume_if_exists l.25,"
                           f" peft_scheme l.87, lora target_modules {target_line})",
        "generate script": f"{GENERATE_SCRIPT}@{commit}",
        "generate config": f"{GENERATE_CONFIG}@{commit} (repetition_penalty {penalty_line})",
        "peft schemes": f"{PEFT_CONFIG}@{commit} PEFT_CONFIG_MAP {peft_lines}",
    }


P2403 = Profile(
    name="24.03", nemo_version="1.23.0rc0 (main at 9d86acd5eb + 24.03 fixes)", commit="2874086783",
    ref="branch chcui/conversion_precision_on_24.03 (base 9d86acd5eb)",
    converters={
        "llama": _llama("2874086783", "l.46-59"),
        "mistral_7b": _mistral("2874086783", "l.49-57", "32"),
        "mixtral": _mixtral("2874086783", "l.49-53", FREE_PRECISIONS, "32", ()),
        **_common("2874086783"),
    },
    peft_schemes=PEFT_1X, lora_default_targets=ALL_LORA_TARGETS, repetition_penalty=1.2,
    llama_rope_types=("linear",), llama_auto_tokenizer=False, mistral_needs_sliding_window=True,
    sources=_sources("2874086783", "l.322-331", "l.104", "l.147"),
)

P2405 = replace(
    P2403, name="24.05", nemo_version="2.0.0rc0", commit="265bd739c7", ref="tag v2.0.0rc0",
    converters={
        "llama": _llama("265bd739c7", "l.46-59"),
        "mistral_7b": _mistral("265bd739c7", "l.49-57", "32"),
        # choices=[16,'16','bf16','16-mixed','bf16-mixed',32,'32'] (l.56): the str values apply.
        "mixtral": _mixtral("265bd739c7", "l.52-59", ("16", "bf16", "32"), "32", ("--low-ram", "--tmp-dir")),
        **_common("265bd739c7"),
    },
    # YAML default narrowed to QKV only, and a `variant` key (nemo | canonical) appeared.
    lora_default_targets=("attention_qkv",), repetition_penalty=1.0, llama_auto_tokenizer=True,
    struct_keys_added=("model.peft.lora_tuning.variant",),
    sources=_sources("265bd739c7", "l.358-367", "l.105", "l.148"),
)

P2407 = replace(
    P2405, name="24.07", nemo_version="2.0.0rc1", commit="579983fbfc", ref="tag r2.0.0rc1",
    converters={
        "llama": _llama("579983fbfc", "l.46-59"),
        "mistral_7b": _mistral("579983fbfc", "l.49-57", "bf16"),
        "mixtral": _mixtral("579983fbfc", "l.52-65", ("16", "bf16", "32"), "bf16", ("--low-ram", "--tmp-dir")),
        "gemma2": _gemma2("579983fbfc"),
        "qwen2": _qwen2("579983fbfc"),
        **_common("579983fbfc"),
    },
    peft_schemes=PEFT_1X + ("qlora",),
    sources=_sources("579983fbfc", "l.399-409", "l.105", "l.148"),
)

P2409 = replace(
    P2407, name="24.09", nemo_version="2.0.0", commit="e938df327c", ref="tag v2.0.0",
    converters={
        # --llama31 arrived with 05ced1e76a (#9815, 2024-08-15): in v2.0.0, not in r2.0.0rc1.
        "llama": _llama("e938df327c", "l.48-72", llama31=True),
        "mistral_7b": _mistral("e938df327c", "l.50-60", "bf16", low_ram=True),
        # valid_precision_values lost 32 here (l.61): --precision 32 is an argparse error.
        "mixtral": _mixtral("e938df327c", "l.53-66", ("16", "bf16"), "bf16", ("--low-ram", "--tmp-dir")),
        "gemma2": _gemma2("e938df327c"),
        "qwen2": _qwen2("e938df327c"),
        **_common("e938df327c"),
    },
    peft_schemes=PEFT_1X + ("qlora", "mlp_head"), llama_rope_types=("linear", "llama3"),
    mistral_needs_sliding_window=False,
    struct_keys_added=("model.peft.lora_tuning.variant", "model.data.train_ds.global_sample_mapping",
                       "model.data.validation_ds.global_sample_mapping", "model.data.test_ds.global_sample_mapping"),
    sources=_sources("e938df327c", "l.416-427", "l.105", "l.148"),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (P2403, P2405, P2407, P2409)}

# Quirks that change what a run produces, per profile, for `peftpipe render` and the docs.
QUIRKS: dict[str, tuple[str, ...]] = {
    "24.03": (
        "llama converter always uses LlamaTokenizer (sentencepiece): Llama 3 (no tokenizer.model) fails",
        "llama converter accepts only rope_scaling type linear: Llama 3.1 fails",
        "mistral converter sets encoder_seq_length = sliding_window: configs with sliding_window null break",
        "LoRA YAML default targets all four modules; generation repetition_penalty defaults to 1.2",
    ),
    "24.05": (
        "LoRA YAML default narrowed to ['attention_qkv']; lora_tuning.variant added",
        "generation repetition_penalty default 1.0",
        "no qwen2 converter",
    ),
    "24.07": ("qwen2 and gemma2 converters added; mistral and mixtral default to --precision bf16",),
    "24.09": (
        "llama converter: --llama31 (type=bool, default True) turns on Llama-3.1 RoPE scaling for every llama",
        "mixtral converter no longer accepts --precision 32",
        "mistral converter tolerates sliding_window null and gains --low-ram",
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown NeMo container profile {name!r}; known: {', '.join(PROFILES)}") from None
