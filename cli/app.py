"""The ``peftpipe`` command line. Prefect is imported only by the commands that run flows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.artifacts import app as artifacts_app
from cli.comparison import print_base_vs_adapter
from cli.data import data_app
from cli.export import export
from cli.generate import generate
from cli.render import render
from cli.runs import runs
from cli.spec_commands import init, spec_app
from cli.specs import INVALID_SPEC_EXIT, SetOption, checked_run_id_option, errors, load_or_exit, parse_overrides

app = typer.Typer(help="Parameter-efficient fine-tuning pipelines for Slurm clusters.", no_args_is_help=True)
hub_app = typer.Typer(help="Hugging Face Hub mirror tools.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(data_app, name="data")
app.command()(render)
app.command()(generate)
app.command()(export)
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(spec_app, name="spec")
app.command()(init)
app.command()(runs)
console = Console()
FAILED_EXIT = 1


def main() -> None:
    """The ``peftpipe`` command: a file that cannot be read or written ends it with one line, not a traceback."""
    try:
        app()
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        errors.print(f"peftpipe{where}: {error.strerror or error}. Fix: check the path and its permissions.",
                     markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(FAILED_EXIT) from None


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
    run_id = checked_run_id_option(run_id)
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
    print_base_vs_adapter(console, summary.get("metrics") or {})
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

    if not log_file.is_file():
        errors.print(f"LOG_FILE: {log_file} is not a file. Fix: pass a job's log (slurm-<job id>.out or output.log).",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT)
    text = log_file.read_text(encoding="utf-8", errors="replace")
    print(json.dumps(diagnose_log(state, exit_code, text).as_dict(), ensure_ascii=False))


@app.command("tiny-model")
def tiny_model(
    out_dir: Path,
    corpus: Annotated[list[Path], typer.Option(help="JSON/JSONL/text files the tokenizer is trained on.")],
    vocab_size: int = 1024,
    family: Annotated[str, typer.Option(help="Model family: llama, mistral, qwen2, qwen3, gemma, gemma2,"
                                        " gemma3_text, phi3, gpt_neox, gpt2, falcon, stablelm, mixtral,"
                                        " qwen2_moe.")] = "llama",
) -> None:
    """Build a tiny random-weight model of a family (default Llama) and its tokenizer in OUT_DIR (no download)."""
    from peftpipe.tiny_model import FAMILIES, build_tiny_model, corpus_from_files

    try:
        texts = list(corpus_from_files(corpus))
    except (OSError, ValueError, RecursionError) as error:  # missing file, not UTF-8, malformed JSON
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        errors.print(f"--corpus: cannot read {', '.join(map(str, corpus))} ({detail}). Fix: pass JSON, JSONL or text"
                     " files in UTF-8.", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT) from None
    if family not in FAMILIES:
        errors.print(f"--family: unknown family {family!r}. Fix: choose one of {', '.join(FAMILIES)}.",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT)
    build_tiny_model(out_dir, iter(texts), family=family, vocab_size=vocab_size)
    console.print(f"tiny {family} model written to {out_dir}")


@hub_app.command("serve")
def hub_serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Annotated[Path | None, typer.Option(help="Write the bound port here once listening.")] = None,
    writable: Annotated[bool, typer.Option(help="Also take pushes (create_repo, upload_folder) into ROOT; with"
                                                 " PEFTPIPE_HUB_WRITE_TOKEN set, only with that token.")] = False,
) -> None:
    """Serve ROOT/<owner>/<name>/ repositories to huggingface_hub (use HF_ENDPOINT=http://HOST:PORT)."""
    from peftpipe.hub.mirror import MirrorRoot, make_server

    if not root.is_dir():
        errors.print(f"ROOT: {root} is not a directory. Fix: pass the mirror directory (ROOT/<owner>/<name>/).",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(INVALID_SPEC_EXIT)
    try:
        mirror = MirrorRoot(root, writable=writable, write_token=os.environ.get("PEFTPIPE_HUB_WRITE_TOKEN") or None)
        server = make_server(mirror, host, port)
    except OSError as error:  # a host that does not resolve, a port in use or not allowed
        errors.print(f"cannot listen on {host}:{port} ({error.strerror or error}). Fix: choose another --host or"
                     " --port (0 picks a free one).", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(FAILED_EXIT) from None
    bound = server.server_address[1]
    if port_file is not None:
        port_file.write_text(f"{bound}\n")
    console.print(f"serving {root} at http://{host}:{bound}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
