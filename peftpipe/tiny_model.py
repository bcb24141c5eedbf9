"""Build a tiny random-weight model of any supported family with its own tokenizer, without any download.

Used by the embedded default run and the tests (the family matrix): the tokenizer is a byte-level
BPE trained on the text it is given, so every string encodes, and the model, built from the
family's own transformers config class, is small enough to train for a few steps on two CPU cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def corpus_from_files(paths: Iterable[Path]) -> Iterator[str]:
    """Every string value of JSON / JSONL files, and the lines of other text files."""
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".json", ".jsonl"):
            docs = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [
                json.loads(text)
            ]
            for doc in docs:
                yield from _strings(doc)
        else:
            yield from text.splitlines()


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


# Family -> (transformers config class, its keyword arguments beyond the shared ones). Sizes are
# tiny; head_dim is set where a family's default (128, 256) would dwarf hidden_size.
def _family_configs(hidden: int, layers: int, heads: int, kv_heads: int) -> dict[str, tuple[str, dict[str, Any]]]:
    head_dim = hidden // heads
    llama_like = {"hidden_size": hidden, "intermediate_size": hidden * 11 // 4, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 2048}
    gemma = {**llama_like, "head_dim": head_dim}
    return {
        "llama": ("LlamaConfig", llama_like),
        "mistral": ("MistralConfig", {**llama_like, "sliding_window": 4096}),
        "qwen2": ("Qwen2Config", llama_like),
        "qwen3": ("Qwen3Config", {**llama_like, "head_dim": head_dim}),
        "gemma": ("GemmaConfig", gemma),
        "gemma2": ("Gemma2Config", {**gemma, "query_pre_attn_scalar": head_dim, "sliding_window": 128}),
        "gemma3_text": ("Gemma3TextConfig", {**gemma, "query_pre_attn_scalar": head_dim, "sliding_window": 128}),
        "phi3": ("Phi3Config", llama_like),
        "gpt_neox": ("GPTNeoXConfig", {"hidden_size": hidden, "intermediate_size": 4 * hidden,
                                       "num_hidden_layers": layers, "num_attention_heads": heads,
                                       "max_position_embeddings": 2048}),
        "gpt2": ("GPT2Config", {"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": 2048}),
        "falcon": ("FalconConfig", {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                                    "max_position_embeddings": 2048}),
        "stablelm": ("StableLmConfig", llama_like),
        "mixtral": ("MixtralConfig", {**llama_like, "num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen2_moe": ("Qwen2MoeConfig", {**llama_like, "num_experts": 4, "num_experts_per_tok": 2,
                                         "moe_intermediate_size": hidden, "shared_expert_intermediate_size": hidden}),
    }


FAMILIES = tuple(_family_configs(64, 2, 4, 2))


def build_tiny_llama(out_dir: Path, corpus: Iterable[str], **options: Any) -> Path:
    """The tiny Llama of the embedded default run (``build_tiny_model`` with family llama)."""
    return build_tiny_model(out_dir, corpus, family="llama", **options)


def build_tiny_model(
    out_dir: Path,
    corpus: Iterable[str],
    family: str = "llama",
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    initializer_range: float = 0.2,
) -> Path:
    """Write config, safetensors weights and tokenizer files of a tiny ``family`` model to ``out_dir``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    families = _family_configs(hidden_size, layers, heads, kv_heads)
    if family not in families:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(families)}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=2048
    )
    class_name, options = families[family]
    config = getattr(transformers, class_name)(
        vocab_size=len(tokenizer),
        **options,
        tie_word_embeddings=True,
        # A larger init than the usual 0.02 lets a frozen, tied, random embedding produce
        # peaked logits, so that an adapter alone can visibly learn on this tiny model.
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
