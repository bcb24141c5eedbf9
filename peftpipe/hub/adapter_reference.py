"""Make a trained HF PEFT adapter name its base model by Hub repo id, not by this machine's cache path.

PEFT writes ``base_model_name_or_path`` as the path the base was loaded from: the fetch cache
directory of the machine that trained, which no other machine has. The published adapter names
the repo id and the pinned commit instead (PEFT's ``revision`` field), so
``AutoPeftModelForCausalLM.from_pretrained`` loads it anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def point_at_hub(adapter_dir: Path, repo_id: str | None, revision: str | None) -> bool:
    """Rewrite ``adapter_config.json`` to name ``repo_id`` at ``revision``; False when there is nothing to do
    (no HF PEFT adapter, or a base model given by local path only)."""
    config_file = adapter_dir / ADAPTER_CONFIG
    if repo_id is None or not config_file.is_file():
        return False
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = repo_id
    if revision:
        config["revision"] = revision
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True
