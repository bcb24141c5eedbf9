"""Merge an HF PEFT adapter into its base model, and prove the merge changed nothing a user sees.

``peftpipe export --merge`` calls :func:`merge_with_parity` in the exporting process (the CLI, or
the export flow's worker): fine for the small models tested here, a 7B merge wants a node with the
memory for it. torch, transformers and peft are imported here only. The merged model is written to a staging folder,
loaded back from disk as stock transformers loads it, and its logits are compared with those of
base + adapter (computed before merging) on a few prompts; only a model within the tolerance
moves into place. Merged models that silently produce garbage (a wrong scaling, a dropped tied
weight, a dtype round trip) are the failure this guards against.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# Largest |logit difference| accepted by default, per weight dtype: fp32 merges are exact up to
# summation order; a 16-bit merge rounds W + BA once, which moves logits by a few hundredths.
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.15, "float16": 0.05}
GENERATED_TOKENS = 8


class MergeParityError(RuntimeError):
    """The merged model's logits differ from base + adapter beyond the tolerance."""


def merge_with_parity(base_path: Path, adapter_dir: Path, out_dir: Path, prompts: list[str],
                      max_shard_size: str = "5GB", tolerance: float | None = None) -> dict[str, Any]:
    """Write base + adapter merged to ``out_dir`` (sharded safetensors, config, tokenizer); return the parity figures."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    dtype = str(base.dtype).removeprefix("torch.")
    limit = tolerance if tolerance is not None else DEFAULT_TOLERANCE.get(dtype, 0.15)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    encoded = [tokenizer(prompt, return_tensors="pt") for prompt in prompts]
    with torch.no_grad():
        reference = [model(**batch).logits.float() for batch in encoded]
        reference_text = [_greedy(model, batch, tokenizer) for batch in encoded]
        merged = model.merge_and_unload()

    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(staging)
        del model, merged, base  # one model in memory at a time: the reloaded one is next
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype="auto").eval()
        with torch.no_grad():
            diffs = [float((reloaded(**batch).logits.float() - ref).abs().max())
                     for batch, ref in zip(encoded, reference)]
            merged_text = [_greedy(reloaded, batch, tokenizer) for batch in encoded]
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    max_diff = max(diffs)
    parity = {
        "prompts": len(prompts),
        "dtype": dtype,
        "max_abs_logit_diff": max_diff,
        "tolerance": limit,
        "generations_equal": merged_text == reference_text,
        "generated_tokens": GENERATED_TOKENS,
    }
    if max_diff > limit or merged_text != reference_text:
        shutil.rmtree(staging, ignore_errors=True)
        raise MergeParityError(
            f"merged model differs from base + adapter: max |logit diff| {max_diff:.3g} on {len(prompts)} prompts"
            f" (tolerance {limit:g}, {dtype}); greedy generations equal: {merged_text == reference_text}."
            " Nothing was written. Fix: export the adapter without --merge, or raise --tolerance if the"
            " difference is the rounding of a 16-bit merge.")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)
    return parity


def _greedy(model: Any, batch: Any, tokenizer: Any) -> str:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**batch, max_new_tokens=GENERATED_TOKENS, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=False)
