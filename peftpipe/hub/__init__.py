"""Model downloads from the Hugging Face Hub (or a Hub-compatible mirror)."""
