"""``peftpipe generate RUN_ID``: try a published adapter on a prompt or a JSONL of prompts."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.specs import checked_run_id_option, errors, load_or_exit


def generate(
    run_id: str,
    spec: Annotated[Path, typer.Option(help="The run spec: artifact store, base model source, prompt template.")],
    prompt: Annotated[list[str] | None, typer.Option(help="An input (the record's `input`); repeatable.")] = None,
    file: Annotated[Path | None, typer.Option(help="A JSONL of records with `input` (and other template keys).")] = None,
    tokens: Annotated[int | None, typer.Option(help="New tokens (default: evaluation.tokens_to_generate).")] = None,
) -> None:
    """Print the adapter's greedy answer to each prompt as JSONL ({"input", "pred"}), with the training template."""
    from cli.artifacts import _fail, _store
    from peftpipe.artifacts import ArtifactStoreError, restore
    from peftpipe.hub.fetch import fetch_model, use_local_model

    from peftpipe.engines import engine_for

    run_id = checked_run_id_option(run_id)  # a path from outside: refused before any store is touched
    loaded = load_or_exit(spec, {})
    engine = engine_for(loaded.spec.engine)
    if not hasattr(engine, "answer"):
        errors.print(f"generate: engine {loaded.spec.engine} publishes no HF PEFT adapter folder; only hf adapters"
                     " can be tried.")
        raise typer.Exit(2)
    records = [{"input": text} for text in prompt or []]
    if file is not None:
        records += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records or any("input" not in r for r in records):
        errors.print("generate: give --prompt TEXT or --file JSONL whose records each have `input`.")
        raise typer.Exit(2)
    store = _store(None, spec, None, None)
    model = loaded.spec.model
    with tempfile.TemporaryDirectory(prefix="peftpipe-generate-") as scratch:
        adapter = Path(scratch) / "adapter"
        try:
            restore(store, run_id, "adapter", adapter)
        except ArtifactStoreError as error:
            raise _fail(error) from error
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        if model.path is not None:
            base = use_local_model(loaded.resolve(model.path)).path
        else:
            # The base the adapter names (repo id and pinned commit), through the spec's Hub settings.
            cache = Path(model.cache_dir).expanduser() if model.cache_dir else None
            base = fetch_model(config["base_model_name_or_path"], config.get("revision") or model.revision,
                               cache_dir=cache, endpoint=model.endpoint, token=os.environ.get("HF_TOKEN")).path
        evaluation = loaded.spec.evaluation
        new_tokens = tokens or evaluation.tokens_to_generate
        preds = engine.answer(base, adapter, records, loaded.spec.dataset.prompt_template,
                       loaded.spec.train.max_seq_length + new_tokens, new_tokens, evaluation.batch_size)
    for record, pred in zip(records, preds):
        print(json.dumps({"input": record["input"], "pred": pred}, ensure_ascii=False))
