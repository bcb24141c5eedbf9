"""``peftpipe export RUN_ID``: a published run as a ready-to-serve HF PEFT folder, merged and pushed on request."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.specs import checked_run_id_option, errors

console = Console()


def export(
    run_id: str,
    out: Annotated[Path | None, typer.Option(help="Folder to write: adapter/, and merged/ with --merge (default"
                                                   " export/RUN_ID).")] = None,
    spec: Annotated[Path | None, typer.Option(help="A run spec: its artifact store and Hub settings.")] = None,
    store: Annotated[str | None, typer.Option(help="Artifact store URL (file://DIR or s3://BUCKET/PREFIX).")] = None,
    merge: Annotated[bool, typer.Option(help="Also write base + adapter merged (sharded safetensors), after a"
                                             " logits parity check.")] = False,
    push: Annotated[str | None, typer.Option(help="Upload to this Hub repo id (HF_ENDPOINT, HF_TOKEN); with"
                                                  " --merge the merged model, else the adapter.")] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest safetensors shard of the merged model.")] = "5GB",
    tolerance: Annotated[float | None, typer.Option(help="Largest |logit difference| accepted between merged and"
                                                         " base + adapter (default by dtype: fp32 1e-3, bf16"
                                                         " 0.15, fp16 0.05).")] = None,
    to_store: Annotated[bool, typer.Option(help="Add the export to the run in the artifact store (under export/,"
                                                " listed in its manifest).")] = True,
) -> None:
    """Export RUN_ID from the artifact store: HF PEFT adapter with model card; --merge, --push REPO_ID."""
    from cli.artifacts import _store
    from peftpipe.artifacts import ArtifactStoreError
    from peftpipe.engines import engine_for
    from peftpipe.export import ExportError, export_stage

    checked_run_id_option(run_id, "RUN_ID")
    target = _store(store, spec, None, None)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache_dir = None
    if spec is not None:
        from cli.specs import load_or_exit

        model = load_or_exit(spec, {}).spec.model
        endpoint = model.endpoint or endpoint
        cache_dir = Path(model.cache_dir).expanduser() if model.cache_dir else None
    try:
        summary = export_stage(target, run_id, out or Path("export") / run_id, engine_for, merge=merge, push_repo=push, endpoint=endpoint,
                               cache_dir=cache_dir, token=os.environ.get("HF_TOKEN"), max_shard_size=max_shard_size,
                               tolerance=tolerance, to_store=to_store)
    except ExportError as error:
        errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except (ArtifactStoreError, ValueError) as error:
        errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(json.dumps(summary, indent=2), markup=False, highlight=False, soft_wrap=True)
