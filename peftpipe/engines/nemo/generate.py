"""Hydra overrides for ``megatron_gpt_generate.py`` and reading what it writes.

Generation restores the base .nemo and the adapter .nemo that training wrote, writes
``<prefix>_test_<name>_inputs_preds_labels.jsonl`` on global rank 0 (only with
``write_predictions_to_file=True``), and the pipeline scores that file itself: NeMo's
``exact_string_match`` is raw string equality and its generation defaults include a repetition
penalty (1.2 in the 24.03 container), so the settings are recorded with the metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from peftpipe.spec_issues import SpecError
from peftpipe.engines.nemo.finetune import nemo_prompt_template
from peftpipe.engines.nemo.layout import TEST_NAME, NemoPaths
from peftpipe.engines.nemo.overrides import override
from peftpipe.engines.nemo.profiles import Profile
from peftpipe.engines.nemo.resources import generate_layout, precision_value, trainer_precision
from peftpipe.metrics import score_predictions
from peftpipe.spec import RunSpec

# megatron_gpt_generate_config.yaml `inference:` defaults (l.141-150 at 2874086783; the same keys
# later, with repetition_penalty 1.0 from v2.0.0rc0 on). repetition_penalty comes from the profile.
INFERENCE_DEFAULTS = {"top_k": 0, "top_p": 0.9, "temperature": 1.0}


def generation_settings(spec: RunSpec, profile: Profile) -> dict[str, Any]:
    """What generation runs with, and where each value comes from; recorded next to the metrics."""
    generation = spec.nemo.generation
    settings: dict[str, Any] = {
        "tokens_to_generate": spec.evaluation.tokens_to_generate,
        "greedy": spec.evaluation.greedy,
        "batch_size": spec.evaluation.batch_size,
        "repetition_penalty": generation.repetition_penalty if generation.repetition_penalty is not None
        else profile.repetition_penalty,
        "repetition_penalty_source": "spec" if generation.repetition_penalty is not None
        else f"NeMo default of container {profile.name}",
    }
    for key, default in INFERENCE_DEFAULTS.items():
        value = getattr(generation, key)
        settings[key] = default if value is None else value
    settings["exact_match"] = "raw string equality, as NeMo's exact_string_match"
    return settings


def generate_overrides(spec: RunSpec, paths: NemoPaths, base_nemo: Path, profile: Profile) -> list[str]:
    precision = trainer_precision(spec)
    if precision is None:
        raise SpecError.single("train.precision", "auto cannot choose between bf16 and 16 without the GPU model",
                            "set execution.slurm.gpu_type or nemo.gpu, or set train.precision")
    layout = generate_layout(spec)
    batch = spec.evaluation.batch_size
    settings = generation_settings(spec, profile)
    test = "model.data.test_ds"
    lines = [
        override("trainer.devices", layout.devices),
        override("trainer.num_nodes", layout.nodes),
        override("trainer.precision", precision_value(precision)),
        override("model.restore_from_path", str(base_nemo)),
        override("model.peft.restore_from_path", str(paths.adapter_nemo(spec.peft.method))),
        override("model.peft.peft_scheme", spec.peft.method),
        # merge_inference_cfg asserts these equal training's (nlp_adapter_mixins.py l.500-505, 2874086783).
        override("model.tensor_model_parallel_size", spec.nemo.tensor_parallel_size),
        override("model.pipeline_model_parallel_size", spec.nemo.pipeline_parallel_size),
        override("model.global_batch_size", batch),
        override("model.micro_batch_size", batch),
        override(f"{test}.file_names", [str(paths.run.data_file("test"))]),
        override(f"{test}.names", [TEST_NAME]),
        override(f"{test}.global_batch_size", batch),
        override(f"{test}.micro_batch_size", batch),
        override(f"{test}.tokens_to_generate", spec.evaluation.tokens_to_generate),
        override(f"{test}.max_seq_length", spec.train.max_seq_length),
        override(f"{test}.prompt_template", nemo_prompt_template(spec.dataset.prompt_template)),
        override(f"{test}.label_key", "output"),
        override(f"{test}.truncation_field", "input"),
        override(f"{test}.index_mapping_dir", str(paths.test_index_dir)),
        # Without these two nothing is written (megatron_gpt_sft_model.py l.554-566).
        override(f"{test}.write_predictions_to_file", True),
        override(f"{test}.output_file_path_prefix", str(paths.predictions_prefix)),
        # Any metric but `loss` makes NeMo generate even if predictions were not written.
        override(f"{test}.metric.name", "exact_string_match"),
        override("inference.greedy", spec.evaluation.greedy),
        override("inference.repetition_penalty", float(settings["repetition_penalty"])),
    ]
    if not spec.evaluation.greedy:
        lines += [override(f"inference.{key}", settings[key]) for key in INFERENCE_DEFAULTS]
    return lines


def read_nemo_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of NeMo's ``*_inputs_preds_labels.jsonl``: input, pred, label and the record's metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: megatron_gpt_generate.py writes it only with"
                                " write_predictions_to_file=True, on global rank 0, after trainer.test finished")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"input", "pred", "label"} - set(row)
        if missing:
            raise ValueError(f"{path}:{number} lacks {sorted(missing)}; NeMo 1.x writes input, pred and label"
                             " (NeMo 2's llm.generate writes prediction instead)")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no predictions")
    return rows


def write_predictions(rows: list[dict[str, Any]], predictions_file: Path) -> None:
    """The pipeline's predictions.jsonl: the same keys, input/pred/label first."""
    predictions_file.parent.mkdir(parents=True, exist_ok=True)
    with predictions_file.open("w", encoding="utf-8") as out:
        for row in rows:
            ordered = {"input": row["input"], "pred": row["pred"], "label": row["label"]}
            ordered.update({k: v for k, v in row.items() if k not in ordered})
            out.write(json.dumps(ordered, ensure_ascii=False) + "\n")


# Lightning's test results table: "│        test_loss        │   1.2345   │" (or without box characters).
_TEST_LOSS = re.compile(r"^[\s│|]*test_loss[\s│|]+([-+0-9.eE]+|nan|inf)[\s│|]*$")


def read_test_loss(log_text: str) -> float | None:
    """``test_loss`` from the results table trainer.test prints, if the log has one."""
    for line in reversed(log_text.splitlines()):
        match = _TEST_LOSS.match(line)
        if match:
            return float(match.group(1))
    return None


def evaluation_metrics(spec: RunSpec, profile: Profile, paths: NemoPaths, log_text: str = "") -> dict[str, Any]:
    """Copy NeMo's predictions into the run's predictions.jsonl, score them, record the settings."""
    write_predictions(read_nemo_predictions(paths.nemo_predictions()), paths.run.predictions_file)
    scores = score_predictions(paths.run.predictions_file)
    loss = read_test_loss(log_text)
    wanted = set(spec.evaluation.metrics)
    metrics: dict[str, Any] = {k: v for k, v in scores.items() if k in wanted or k == "records"}
    if "loss" in wanted and loss is not None:
        metrics["loss"] = loss
    metrics["generation"] = generation_settings(spec, profile)
    return metrics
