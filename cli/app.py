"""The ``peftpipe`` command line. Prefect is imported only by the commands that run flows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.artifacts import app as artifacts_app
from cli.data import data_app
from cli.render import render
from cli.spec_commands import init, spec_app
from cli.specs import SetOption, errors, load_or_exit, parse_overrides

app = typer.Typer(help="Parameter-efficient fine-tuning pipelines for Slurm clusters.", no_args_is_help=True)
hub_app = typer.Typer(help="Hugging Face Hub mirror tools.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(data_app, name="data")
app.command()(render)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(spec_app, name="spec")
app.command()(init)
console = Console()

@app.command()
def validate(spec: Path, set_: SetOption = None) -> None:
    """Check a run spec completely; exit 0 if it can run, 2 with every problem otherwise."""
    loaded = load_or_exit(spec, parse_overrides(set_))
    console.print(f"{spec}: valid ({loaded.spec.peft.method} on {loaded.spec.engine}, {loaded.spec.execution.backend})")


@app.command()
def run(
    spec: Path,
    run_id: Annotated[str | None, typer.Option(help="Reuse a run directory (resumes training).")] = None,
    set_: SetOption = None,
) -> None:
    """Run the finetune flow for SPEC through Prefect and print a summary of its stages."""
    overrides = parse_overrides(set_)
    loaded = load_or_exit(spec, overrides)
    from flows.finetune import finetune
    from flows.report import flow_run_url, stage_rows
    from peftpipe.interrupts import remembered_interrupts
    from peftpipe.stages import new_run_id

    run_id = run_id or new_run_id(loaded.spec.name)
    with remembered_interrupts():
        state = finetune(spec_path=str(spec.resolve()), run_id=run_id, overrides=overrides, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    result = state.result(raise_on_failure=False)
    summary = result if isinstance(result, dict) else {}
    table = Table(title=f"peftpipe run {run_id}: {state.name}")
    for column in ("stage", "status", "duration", "key figures"):
        table.add_column(column)
    for row in stage_rows(flow_run_id):
        duration = f"{row.duration_s:.1f} s" if row.duration_s is not None else "-"
        table.add_row(row.name, row.state, duration, _key_figures(row.name, summary))
    console.print(table)
    console.print(f"run directory: {summary.get('run_dir', '-')}")
    console.print(f"manifest: {summary.get('manifest_url', '-')}")
    console.print(f"Prefect UI: {flow_run_url(flow_run_id)}")
    if not os.environ.get("PREFECT_API_URL"):
        console.print("(local ephemeral API: run `prefect server start` to browse this run in the UI)")
    if not state.is_completed():
        errors.print(f"[bold red]run failed:[/] {result}", markup=True, highlight=False)
        raise typer.Exit(1)


def _key_figures(task_name: str, summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    stage = task_name.split("-attempt")[0]
    if stage == "fetch-model":
        model = summary["model"]
        return f"{model['repo_id'] or 'local'} @ {(model['commit_sha'] or '-')[:12]}"
    if stage == "prepare-data":
        counts = summary["data"]["counts"]
        return " / ".join(f"{k} {v}" for k, v in counts.items())
    if stage == "finetune":
        train = summary["train"]
        resumed = f", resumed from {train['resumed_from_step']}" if train["resumed_from_step"] else ""
        return f"step {train['final_step']}, loss {train['final_loss']:.4f}{resumed}"
    if stage == "evaluate":
        m = summary["metrics"]
        return ", ".join(f"{k} {m[k]:.3f}" for k in ("exact_match", "exact_match_normalized", "f1", "loss") if k in m)
    if stage == "publish":
        return f"{summary['objects']} objects + manifest"
    return ""


@app.command()
def diagnose(
    log_file: Path,
    state: Annotated[str | None, typer.Option(help="Slurm job state from sacct, e.g. FAILED or OUT_OF_MEMORY.")] = None,
    exit_code: Annotated[int | None, typer.Option(help="The job's exit code.")] = None,
) -> None:
    """Print why a job ended as JSON: {"kind": ..., "evidence": "<the matching line>"}."""
    import json

    from peftpipe.failures import diagnose as diagnose_log

    text = log_file.read_text(encoding="utf-8", errors="replace")
    print(json.dumps(diagnose_log(state, exit_code, text).as_dict(), ensure_ascii=False))


@app.command("tiny-model")
def tiny_model(
    out_dir: Path,
    corpus: Annotated[list[Path], typer.Option(help="JSON/JSONL/text files the tokenizer is trained on.")],
    vocab_size: int = 1024,
) -> None:
    """Build a tiny random-weight Llama and its tokenizer in OUT_DIR (no download)."""
    from peftpipe.tiny_model import build_tiny_llama, corpus_from_files

    build_tiny_llama(out_dir, corpus_from_files(corpus), vocab_size=vocab_size)
    console.print(f"tiny model written to {out_dir}")


@hub_app.command("serve")
def hub_serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
) -> None:
    """Serve ROOT/<owner>/<name>/ repositories to huggingface_hub (use HF_ENDPOINT=http://HOST:PORT)."""
    from peftpipe.hub.mirror import MirrorRoot, make_server

    server = make_server(MirrorRoot(root), host, port)
    bound = server.server_address[1]
    if port_file is not None:
        port_file.write_text(f"{bound}\n")
    console.print(f"serving {root} at http://{host}:{bound}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
