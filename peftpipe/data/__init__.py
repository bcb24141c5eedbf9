"""Dataset converters into NeMo's fine-tuning JSONL (`{"input": ..., "output": ...}` per line)."""
