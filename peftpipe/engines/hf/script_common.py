"""What the hf engine's job scripts share (train.py, generate.py): records into token ids, quiet logs, the command line.

Imported by the scripts in the job, not by the pipeline; torch comes in through ``packing`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from peftpipe.engines.hf.packing import IGNORE_INDEX


def prompt_prefix(template: str) -> str:
    """The template up to its final ``{output}``: what the model sees before the answer."""
    return template[: template.rindex("{output}")]


def encode_record(record: dict[str, Any], template: str, tokenizer: Any, max_seq_length: int) -> dict[str, list[int]]:
    """Token ids and labels for one record; the prompt is cut from the left if too long."""
    prompt_ids = tokenizer(prompt_prefix(template).format(**record), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer_ids = answer_ids[: max_seq_length - 1]
    prompt_ids = truncate_prompt(prompt_ids, max_seq_length - len(answer_ids), tokenizer.bos_token_id)
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def truncate_prompt(ids: list[int], budget: int, bos_id: int | None) -> list[int]:
    """Cut a too-long prompt from the left (keeping BOS): the question sits at its end."""
    if len(ids) <= budget:
        return ids
    keep_bos = ids[:1] if ids and ids[0] == bos_id else []
    return keep_bos + ids[len(ids) - (budget - len(keep_bos)) :]


def read_records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def quiet_libraries() -> None:
    """Keep job logs to what a person reads: no progress bars, no deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()


def script_main(run: Any, description: str, argv: list[str] | None = None) -> None:
    """The command line shared by the engine's scripts: ``--config CONFIG.json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="JSON file written by peftpipe")
    args = parser.parse_args(argv)
    injected_exit = os.environ.get("PEFTPIPE_FAULT_EXIT_CODE")  # test-only, off unless set
    if injected_exit:
        print(f"injected failure: exiting with code {injected_exit}", flush=True)
        sys.exit(int(injected_exit))
    quiet_libraries()
    run(json.loads(Path(args.config).read_text()))
