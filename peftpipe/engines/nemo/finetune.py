"""Hydra overrides for ``megatron_gpt_finetuning.py``.

Every default that silently changes a run is set explicitly: ``trainer.precision`` (YAML: 16),
``model.peft.peft_scheme`` (YAML: adapter), LoRA ``target_modules`` (YAML: all four in 24.03,
QKV only later, QKV only when the key is absent), ``concat_sampling_probabilities`` (required as
a list even for one file), ``index_mapping_dir`` (index files go next to the data otherwise) and
the log directory, which stays the same for every attempt so that a retry resumes from ``-last``.
"""

from __future__ import annotations

from pathlib import Path

from peftpipe.spec_issues import SpecError
from peftpipe.engines.nemo.layout import NemoPaths, experiment_name
from peftpipe.engines.nemo.overrides import override
from peftpipe.engines.nemo.resources import precision_value, trainer_precision
from peftpipe.spec import RunSpec

NEMO_TARGETS = ("attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2", "attention", "mlp", "all")
# HF module names -> NeMo's fused modules (peft_config.py PEFT_MODULE_MAP). NeMo fuses q, k and v
# into one linear, and gate and up into fc1, so their members can only be adapted together.
HF_TO_NEMO = {
    "q_proj": "attention_qkv", "k_proj": "attention_qkv", "v_proj": "attention_qkv",
    "query_key_value": "attention_qkv", "qkv_proj": "attention_qkv", "c_attn": "attention_qkv",
    "Wqkv": "attention_qkv",
    "o_proj": "attention_dense", "out_proj": "attention_dense", "dense": "attention_dense",
    "gate_proj": "mlp_fc1", "up_proj": "mlp_fc1", "dense_h_to_4h": "mlp_fc1", "c_fc": "mlp_fc1", "fc1": "mlp_fc1",
    "down_proj": "mlp_fc2", "dense_4h_to_h": "mlp_fc2", "fc2": "mlp_fc2",
}
FUSED_GROUPS = ({"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"})


def lora_target_modules(names: list[str] | str) -> list[str]:
    """NeMo ``lora_tuning.target_modules`` for HF or NeMo module names, in NeMo's order.

    ``auto`` is every attention and MLP projection, as for the hf engine: NeMo's four fused modules.
    """
    if names == "auto":
        return ["attention_qkv", "attention_dense", "mlp_fc1", "mlp_fc2"]
    unknown = [n for n in names if n not in HF_TO_NEMO and n not in NEMO_TARGETS]
    if unknown:
        raise SpecError.single("peft.lora.target_modules", f"{unknown} name no module NeMo can adapt (an unknown name"
                            " makes megatron_gpt_finetuning.py exit 1)",
                            f"use NeMo's {', '.join(NEMO_TARGETS)} or the HF names {', '.join(HF_TO_NEMO)}")
    for group in FUSED_GROUPS:
        present = group & set(names)
        if present and present != group:
            raise SpecError.single("peft.lora.target_modules", f"lists {sorted(present)} without"
                                f" {sorted(group - present)}; NeMo fuses them into one linear layer",
                                f"list all of {sorted(group)} or none")
    mapped = {HF_TO_NEMO.get(n, n) for n in names}
    return [t for t in NEMO_TARGETS if t in mapped]


def nemo_prompt_template(template: str) -> str:
    """The template as NeMo must receive it: NeMo applies ``.encode('utf-8').decode('unicode_escape')``
    to it (gpt_sft_dataset.py l.154 at 2874086783), so newlines, backslashes and non-ASCII text
    are sent escaped and come back exactly."""
    return template.encode("unicode_escape").decode("ascii")


def peft_overrides(spec: RunSpec) -> list[str]:
    """``model.peft.*``: the scheme and that scheme's block, every key explicit."""
    peft, nemo = spec.peft, spec.nemo
    scheme = peft.method
    lines = [override("model.peft.peft_scheme", scheme)]
    if scheme == "lora":
        block = "model.peft.lora_tuning"
        lines += [
            override(f"{block}.target_modules", lora_target_modules(peft.lora.target_modules)),
            override(f"{block}.adapter_dim", peft.lora.r),
            override(f"{block}.alpha", peft.lora.alpha),
            override(f"{block}.adapter_dropout", peft.lora.dropout),
            override(f"{block}.layer_selection", nemo.layer_selection),
        ]
    elif scheme == "adapter":
        block = "model.peft.adapter_tuning"
        lines += [
            override(f"{block}.type", peft.adapter.type),
            override(f"{block}.adapter_dim", peft.adapter.dim),
            override(f"{block}.adapter_dropout", peft.adapter.dropout),
            override(f"{block}.norm_position", peft.adapter.norm_position),
            override(f"{block}.layer_selection", nemo.layer_selection),
        ]
    elif scheme == "ptuning":
        block = "model.peft.p_tuning"
        lines += [
            override(f"{block}.virtual_tokens", peft.ptuning.num_virtual_tokens),
            override(f"{block}.bottleneck_dim", peft.ptuning.encoder_hidden_size),
            override(f"{block}.embedding_dim", nemo.ptuning_embedding_dim),
        ]
    elif scheme == "ia3":
        lines.append(override("model.peft.ia3_tuning.layer_selection", nemo.layer_selection))
    return lines


def finetune_overrides(spec: RunSpec, paths: NemoPaths, base_nemo: Path, micro_batch_size: int | None = None,
                       activation_checkpointing: bool | None = None) -> list[str]:
    """Overrides exactly as passed on the command line; the two keyword overrides are what OOM retries change."""
    train, nemo = spec.train, spec.nemo
    precision = trainer_precision(spec)
    if precision is None:
        raise SpecError.single("train.precision", "auto cannot choose between bf16 and 16 without the GPU model",
                            "set execution.slurm.gpu_type or nemo.gpu (e.g. v100, a100), or set train.precision")
    micro = micro_batch_size or train.micro_batch_size
    checkpointing = train.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    data = paths.run
    lines = [
        override("name", experiment_name(spec.peft.method)),
        override("trainer.devices", train.devices),
        override("trainer.num_nodes", train.num_nodes),
        override("trainer.precision", precision_value(precision)),
        override("trainer.max_steps", train.max_steps),
        # A checkpoint is saved at each validation, so this is how often a retry can resume from.
        override("trainer.val_check_interval", min(train.checkpoint_every, train.max_steps)),
        override("exp_manager.explicit_log_dir", str(paths.log_dir)),
        override("exp_manager.resume_if_exists", True),
        override("exp_manager.resume_ignore_no_checkpoint", True),
        override("exp_manager.create_early_stopping_callback", nemo.early_stopping),
        override("model.restore_from_path", str(base_nemo)),
        override("model.tensor_model_parallel_size", nemo.tensor_parallel_size),
        override("model.pipeline_model_parallel_size", nemo.pipeline_parallel_size),
        override("model.sequence_parallel", nemo.sequence_parallel),
        override("model.global_batch_size", train.global_batch_size),
        override("model.micro_batch_size", micro),
        override("model.seed", train.seed),
        override("model.optim.lr", float(train.learning_rate)),
        override("model.optim.weight_decay", float(train.weight_decay)),
        override("model.optim.sched.name", "CosineAnnealing"),
        override("model.optim.sched.warmup_steps", train.warmup_steps),
    ]
    if checkpointing:
        lines += [
            override("model.activations_checkpoint_granularity", "full"),
            override("model.activations_checkpoint_method", "uniform"),
            override("model.activations_checkpoint_num_layers", 1),
        ]
    lines += peft_overrides(spec)
    template = nemo_prompt_template(spec.dataset.prompt_template)
    for split, key in (("train", "train_ds"), ("validation", "validation_ds")):
        block = f"model.data.{key}"
        lines.append(override(f"{block}.file_names", [str(data.data_file(split))]))
        if split == "train":
            lines += [override(f"{block}.concat_sampling_probabilities", [1.0]),
                      override(f"{block}.prompt_template", template),
                      override(f"{block}.label_key", "output"),
                      override(f"{block}.truncation_field", "input")]
        else:
            lines += [override(f"{block}.names", [split]),
                      override(f"{block}.global_batch_size", train.global_batch_size),
                      override(f"{block}.micro_batch_size", micro)]
        lines += [override(f"{block}.max_seq_length", train.max_seq_length),
                  override(f"{block}.index_mapping_dir", str(paths.train_index_dir))]
        if nemo.pad_to_max_length:
            # Read with data_cfg.get('pad_to_max_length', False); the YAML does not declare it.
            lines.append(override(f"{block}.pad_to_max_length", True, outside_struct=True))
    return lines
