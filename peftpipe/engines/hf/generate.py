"""Generate answers for a test set with a base model and a trained adapter.

Run as ``python -m peftpipe.engines.hf.generate --config CONFIG.json``. Writes a predictions
JSONL with the keys NeMo's ``megatron_gpt_generate.py`` uses (``input``, ``pred``, ``label``
plus the record's other keys) and ``eval_summary.json`` with the answer-token loss and the
generation settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from peftpipe.engines.hf.modeling import load_base_model, mean_loss, resolve_precision
from peftpipe.engines.hf.script_common import encode_record, prompt_prefix, read_records, script_main, truncate_prompt


def generate(config: dict[str, Any]) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(config["precision"])
    torch.manual_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = load_base_model(config["model_path"], precision, device)
    model = PeftModel.from_pretrained(base, config["adapter_dir"]).to(device).eval()

    records = read_records(config["test_file"])
    if config.get("max_records"):
        records = records[: config["max_records"]]
    template, max_len, new_tokens = config["prompt_template"], config["max_seq_length"], config["tokens_to_generate"]
    examples = [encode_record(r, template, tokenizer, max_len) for r in records]
    loss = mean_loss(model, examples, config["batch_size"], pad_id, device, precision)

    started = time.perf_counter()
    preds = _write_predictions(model, records, Path(config["predictions_file"]), tokenizer, pad_id, device, config)
    summary = {
        "records": len(records),
        "loss": loss,
        "generation_s": round(time.perf_counter() - started, 2),
        "tokens_to_generate": new_tokens,
        "greedy": config["greedy"],
        "precision": precision,
    }
    if config.get("baseline_predictions_file"):
        # The same model object with its adapter layers bypassed: the base model on the same records.
        with model.disable_adapter():
            torch.manual_seed(config["seed"])
            summary["baseline_loss"] = mean_loss(model, examples, config["batch_size"], pad_id, device, precision)
            base_preds = _write_predictions(model, records, Path(config["baseline_predictions_file"]), tokenizer,
                                            pad_id, device, config)
        summary["predictions_changed_by_adapter"] = sum(a != b for a, b in zip(preds, base_preds))
        if summary["predictions_changed_by_adapter"] == 0 and abs(summary["baseline_loss"] - loss) < 1e-6:
            # A silently unapplied adapter (wrong target modules, a failed load) must not pass as a result.
            raise SystemExit(f"the adapter in {config['adapter_dir']} changed no prediction and not the loss"
                             f" ({loss:.6f}) on {len(records)} test records: it is not applied. Fix: check"
                             " peft.*.target_modules against the model's module names and the adapter files.")
    Path(config["summary_file"]).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_predictions(model: Any, records: list[dict[str, Any]], path: Path, tokenizer: Any, pad_id: int,
                       device: torch.device, config: dict[str, Any]) -> list[str]:
    """Greedy (or sampled) answers for ``records`` as NeMo's predictions JSONL; returns the answers."""
    template, max_len, new_tokens = config["prompt_template"], config["max_seq_length"], config["tokens_to_generate"]
    path.parent.mkdir(parents=True, exist_ok=True)
    answers: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, len(records), config["batch_size"]):
            chunk = records[start : start + config["batch_size"]]
            prompts = [_prompt_ids(r, template, tokenizer, max_len - new_tokens) for r in chunk]
            for record, pred in zip(chunk, _generate_batch(model, prompts, tokenizer, pad_id, device, config)):
                metadata = {k: v for k, v in record.items() if k not in ("input", "output")}
                out.write(json.dumps({"input": record["input"], "pred": pred, "label": record["output"], **metadata},
                                     ensure_ascii=False) + "\n")
                answers.append(pred)
    return answers


def _prompt_ids(record: dict[str, Any], template: str, tokenizer: Any, budget: int) -> list[int]:
    ids = tokenizer(prompt_prefix(template).format(**record), add_special_tokens=True)["input_ids"]
    return truncate_prompt(ids, budget, tokenizer.bos_token_id)


@torch.no_grad()
def _generate_batch(model: Any, prompts: list[list[int]], tokenizer: Any, pad_id: int, device: torch.device,
                    config: dict[str, Any]) -> list[str]:
    # Left padding keeps every prompt's last token at the end, where generation continues.
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt)
        mask[row, longest - len(prompt) :] = 1
    sampling = {"do_sample": False} if config["greedy"] else {"do_sample": True, "top_p": 0.9, "temperature": 1.0}
    output = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=config["tokens_to_generate"],
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    return [tokenizer.decode(row[longest:], skip_special_tokens=True) for row in output]


if __name__ == "__main__":
    script_main(generate, __doc__.splitlines()[0])
