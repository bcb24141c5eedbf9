"""``peftpipe artifacts``: find a run's outputs in the artifact store and restore them anywhere.

The store is ``--store URL``, else the ``artifacts`` section of ``--spec SPEC``, else
``PEFTPIPE_ARTIFACT_STORE``. S3 credentials come from ``--credentials-block`` (or the spec's
``artifacts.s3.credentials_block``), read through the Prefect API, else from the AWS environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, profiles).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from peftpipe.artifacts import ArtifactStore, ArtifactStoreError, restore
from peftpipe.manifests import ManifestError
from peftpipe.stores import open_store
from peftpipe.spec import ArtifactsSpec

app = typer.Typer(help="List and restore the outputs of published runs.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)
STORE_ENV = "PEFTPIPE_ARTIFACT_STORE"

StoreOption = Annotated[str | None, typer.Option(
    "--store", help=f"file://DIR or s3://BUCKET/PREFIX (default: --spec, then ${STORE_ENV}).")]
SpecOption = Annotated[Path | None, typer.Option(
    "--spec", help="Read the store and its S3 settings from this run spec.")]
EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint-url", help="S3 endpoint (default: the spec's, then AWS_ENDPOINT_URL).")]
BlockOption = Annotated[str | None, typer.Option(
    "--credentials-block", help="prefect-aws block with the S3 credentials: NAME or SLUG/NAME.")]


def _store(store: str | None, spec: Path | None, endpoint_url: str | None, credentials_block: str | None
           ) -> ArtifactStore:
    settings = ArtifactsSpec()
    if spec is not None:
        settings = _spec_settings(spec)
    url = store or (settings.store if spec is not None else os.environ.get(STORE_ENV))
    if not url:
        errors.print(f"no artifact store: pass --store URL or --spec SPEC, or set {STORE_ENV}.", soft_wrap=True)
        raise typer.Exit(2)
    try:
        settings = ArtifactsSpec(store=url, s3=settings.s3)  # validates the URL
    except ValidationError as error:
        _exit_invalid(f"--store {url}", error)
    s3 = settings.s3.model_copy(update={"endpoint_url": endpoint_url or settings.s3.endpoint_url})
    access = None
    block = credentials_block or s3.credentials_block
    if url.startswith("s3://") and block:
        from blocks.credentials import s3_access

        access = s3_access(block)
    return open_store(url, s3, access)


def _spec_settings(spec: Path) -> ArtifactsSpec:
    """The ``artifacts`` section of ``spec``; a file that is missing or malformed ends with one line."""
    try:
        raw = yaml.safe_load(spec.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        errors.print(f"--spec {spec}: cannot read it as YAML ({' '.join(str(error).split())}). Fix: pass a run spec.",
                     markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    section = raw.get("artifacts") if isinstance(raw, dict) else None
    try:
        return ArtifactsSpec.model_validate(section or {})
    except ValidationError as error:
        _exit_invalid(f"--spec {spec}", error)


def _exit_invalid(where: str, error: ValidationError) -> NoReturn:
    problems = "; ".join(f"{'.'.join(map(str, ['artifacts', *item['loc']]))}: {item['msg']}"
                         for item in error.errors())
    errors.print(f"{where}: {problems}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _fail(error: Exception) -> typer.Exit:
    errors.print(str(error), markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(1)


@app.command("ls")
def ls(
    run_id: Annotated[str | None, typer.Argument(help="A run id; without it, every run in the store.")] = None,
    store: StoreOption = None, spec: SpecOption = None, endpoint_url: EndpointOption = None,
    credentials_block: BlockOption = None,
) -> None:
    """List the runs of the store, or the objects of RUN_ID with size and sha256."""
    try:
        target = _store(store, spec, endpoint_url, credentials_block)
        if run_id is None:
            table = Table("run", "status")
            for run in target.list_runs():
                table.add_row(run, _status(target, run))
            console.print(table)
            return
        manifest = target.read_manifest(run_id)
    except (ArtifactStoreError, ValueError) as error:
        raise _fail(error) from None
    if manifest is None:
        errors.print(f"run {run_id!r} has no manifest at {target.url(run_id)}: not published, or its publish"
                     " has not finished.", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    base = manifest.get("base_model") or {}
    console.print(f"run {run_id}: complete, created {manifest.get('created', '?')},"
                  f" base model {base.get('repo_id') or base.get('path')} @ {base.get('commit_sha') or '-'}",
                  markup=False, highlight=False, soft_wrap=True)
    table = Table("name", "size", "sha256")
    for obj in manifest["objects"]:
        table.add_row(obj["key"], f"{obj['size']:,}", obj["sha256"])
    console.print(table)


def _status(target: ArtifactStore, run: str) -> str:
    """One run's line of the listing: a malformed manifest is that run's problem, not the listing's."""
    try:
        return "complete" if target.read_manifest(run) else "incomplete (no manifest)"
    except ManifestError as error:
        return f"malformed manifest: {error}"


@app.command("get")
def get(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    name: Annotated[str, typer.Argument(help="An object (adapter/adapter_model.safetensors) or a prefix (adapter).")],
    dest: Annotated[Path, typer.Argument(help="A file or directory for one object; a directory for a prefix.")],
    store: StoreOption = None, spec: SpecOption = None, endpoint_url: EndpointOption = None,
    credentials_block: BlockOption = None,
) -> None:
    """Download NAME of a complete run to DEST; every file is checked against the manifest's sha256."""
    try:
        restored = restore(_store(store, spec, endpoint_url, credentials_block), run_id, name, dest)
    except (ArtifactStoreError, ValueError) as error:
        raise _fail(error) from None
    for path in restored:
        console.print(f"{path} (sha256 verified)", markup=False, highlight=False, soft_wrap=True)


@app.command("promoted")
def promoted(
    name: Annotated[str, typer.Argument(help="The spec name (the `name:` of the run spec).")],
    store: StoreOption = None, spec: SpecOption = None, endpoint_url: EndpointOption = None,
    credentials_block: BlockOption = None,
) -> None:
    """Print the promoted adapter of spec NAME as JSON: run id, metric and value, data fingerprint."""
    import json

    from peftpipe.promotion import read_promoted

    try:
        pointer = read_promoted(_store(store, spec, endpoint_url, credentials_block), name)
    except (ArtifactStoreError, ValueError) as error:
        raise _fail(error) from None
    if pointer is None:
        errors.print(f"spec {name!r} has no promoted adapter in this store.", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    print(json.dumps(pointer, indent=2))
