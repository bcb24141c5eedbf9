"""The ``peftpipe`` command line. Prefect is imported only by the commands that run flows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.artifacts import app as artifacts_app
from cli.data import data_app
from cli.render import render
from cli.runs import runs
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
app.command()(runs)
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
    from cli.run_summary import print_summary, resume_command
    from flows.finetune import finetune
    from flows.report import flow_run_url, stage_rows
    from peftpipe.interrupts import remembered_interrupts
    from peftpipe.stages import new_run_id

    run_id = run_id or new_run_id(loaded.spec.name)
    try:
        with remembered_interrupts():
            state = finetune(spec_path=str(spec.resolve()), run_id=run_id, overrides=overrides, return_state=True)
    except KeyboardInterrupt:
        errors.print(f"interrupted: run {run_id} stopped (its jobs are cancelled). Resume it from its latest"
                     f" checkpoint with:\n  {resume_command(spec, run_id, set_)}", markup=False, highlight=False,
                     soft_wrap=True)
        raise typer.Exit(130) from None
    flow_run_id = state.state_details.flow_run_id
    result = state.result(raise_on_failure=False)
    summary = result if isinstance(result, dict) else {}
    print_summary(console, f"peftpipe run {run_id}: {state.name}", stage_rows(flow_run_id), summary)
    console.print(f"Prefect UI: {flow_run_url(flow_run_id)}")
    if not os.environ.get("PREFECT_API_URL"):
        console.print("(local ephemeral API: run `prefect server start` to browse this run in the UI)")
    if not state.is_completed():
        errors.print(f"[bold red]run failed:[/] {result}", markup=True, highlight=False)
        errors.print(f"resume it with: {resume_command(spec, run_id, set_)}", markup=False, highlight=False,
                     soft_wrap=True)
        raise typer.Exit(1)


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
