"""Engines: how a fine-tune and an evaluation are run (hf: transformers + peft)."""
