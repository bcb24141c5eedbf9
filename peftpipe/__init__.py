"""peftpipe: parameter-efficient fine-tuning pipelines for Slurm clusters.

This package is the plain core: it imports neither Prefect nor, at import time, torch,
transformers or peft. The Prefect flows and tasks beside it are thin wrappers.
"""

__version__ = "0.1.0"
