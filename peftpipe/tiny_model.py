"""Build a tiny random-weight Llama model with its own tokenizer, without any download.

Used by the embedded default run and the tests: the tokenizer is a byte-level BPE trained
on the text it is given, so every string encodes, and the model is small enough to train
for a few dozen steps on two CPU cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

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


def build_tiny_llama(
    out_dir: Path,
    corpus: Iterable[str],
    vocab_size: int = 1024,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    initializer_range: float = 0.2,
) -> Path:
    """Write config, safetensors weights and tokenizer files of a tiny Llama to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # A larger init than the usual 0.02 lets a frozen, tied, random embedding produce
        # peaked logits, so that an adapter alone can visibly learn on this tiny model.
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
