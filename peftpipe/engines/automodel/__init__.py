"""The automodel engine: NVIDIA NeMo AutoModel's LLM fine-tuning recipe, run in its own environment."""
