"""Try a trained adapter on prompts, with the prompt template and greedy decoding of the evaluate stage.

``peftpipe generate`` calls :func:`answer` in its own process; torch, transformers and peft are
imported here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def answer(model_path: Path, adapter_dir: Path, records: list[dict[str, Any]], prompt_template: str,
           max_seq_length: int, tokens_to_generate: int, batch_size: int = 8) -> list[str]:
    """The adapter's greedy answer to each record (its ``input`` and any other template keys)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from peftpipe.engines.hf.generate import _generate_batch, _prompt_ids
    from peftpipe.engines.hf.modeling import load_base_model, resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = PeftModel.from_pretrained(load_base_model(str(model_path), precision, device), adapter_dir).to(device).eval()
    config = {"greedy": True, "tokens_to_generate": tokens_to_generate}
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prompts = [_prompt_ids(r, prompt_template, tokenizer, max_seq_length - tokens_to_generate) for r in chunk]
        answers += _generate_batch(model, prompts, tokenizer, pad_id, device, config)
    return answers
