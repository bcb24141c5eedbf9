"""The transformers + peft engine. Its scripts import torch; this package itself does not."""
