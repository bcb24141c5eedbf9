"""Runs of a spec side by side, read from the artifact store's manifests (each holds the spec it ran with).

``peftpipe runs``, ``peftpipe runs compare`` and the flow's runs table artifact all build on
:func:`collect_runs` and :func:`runs_table`, so the three show the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftpipe.artifacts import ArtifactStore, ArtifactStoreError
from peftpipe.promotion import read_promoted

# Always shown: what people compare first. Any other key that differs between the runs is added.
HEADLINE_KEYS = ("peft.method", "train.learning_rate", "train.global_batch_size", "train.max_steps")
# Where a run was stored or cached, not how it trained: never a difference worth a column.
IGNORED_PREFIXES = ("name", "workdir", "artifacts.", "model.cache_dir", "model.endpoint", "model.token_secret",
                    "dataset.cache", "execution.slurm_block")
METRICS = ("exact_match", "exact_match_normalized", "f1", "loss")
# Column titles short enough for an 80-column terminal; the comparison view spells keys in full.
SHORT = {"peft.method": "method", "train.learning_rate": "lr", "train.global_batch_size": "global batch",
         "train.max_steps": "steps", "exact_match": "EM", "exact_match_normalized": "EM norm", "f1": "F1"}


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    complete: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    promoted: bool = False

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec", {})

    @property
    def settings(self) -> dict[str, Any]:
        return flatten(self.spec)


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _relevant(key: str, method: str | None) -> bool:
    if key.startswith(IGNORED_PREFIXES):
        return False
    # Only the chosen method's block trains; the others' defaults are noise.
    parts = key.split(".")
    if parts[0] == "peft" and len(parts) > 2 and parts[1] != method:
        return False
    return True


def collect_runs(store: ArtifactStore, spec_name: str | None = None) -> list[StoredRun]:
    """Every run in the store (of ``spec_name`` if given), oldest first; incomplete ones too."""
    runs = []
    promoted_ids: dict[str, str | None] = {}
    for run_id in store.list_runs():
        try:
            manifest = store.read_manifest(run_id)
        except (ArtifactStoreError, ValueError):
            manifest = None  # listed as incomplete: `peftpipe artifacts ls RUN_ID` says what is wrong with it
        name = (manifest or {}).get("spec", {}).get("name")
        if spec_name is not None and name != spec_name and not (manifest is None and run_id.startswith(spec_name)):
            continue
        if name is not None and name not in promoted_ids:
            try:
                pointer = read_promoted(store, name)
            except (ArtifactStoreError, ValueError):
                pointer = None
            promoted_ids[name] = pointer["run_id"] if pointer else None
        runs.append(StoredRun(run_id, manifest is not None, manifest or {},
                              promoted=name is not None and promoted_ids.get(name) == run_id))
    return sorted(runs, key=lambda run: (run.manifest.get("created", ""), run.run_id))


def differing_keys(runs: list[StoredRun]) -> list[str]:
    """Spec keys whose values differ between the complete runs, in spec order."""
    complete = [run for run in runs if run.complete]
    if len(complete) < 2:
        return []
    flats = [run.settings for run in complete]
    keys: list[str] = []
    for flat in flats:
        keys += [key for key in flat if key not in keys]
    return [key for key in keys
            if _relevant(key, flats[0].get("peft.method")) and len({repr(f.get(key)) for f in flats}) > 1]


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def runs_table(runs: list[StoredRun]) -> list[dict[str, str]]:
    """One row per run: status, engine, the headline and differing settings, data fingerprint, metrics, promoted."""
    varying = differing_keys(runs)
    setting_keys = list(HEADLINE_KEYS) + [key for key in varying if key not in HEADLINE_KEYS]
    rows = []
    for run in runs:
        flat = run.settings
        metrics = run.manifest.get("metrics", {})
        row = {"run": run.run_id, "status": "complete" if run.complete else "incomplete (no manifest)",
               "engine": value_text(flat.get("engine"))}
        row.update({SHORT.get(key, key): value_text(flat.get(key)) for key in setting_keys})
        row["data"] = (run.manifest.get("dataset", {}).get("fingerprint") or "-")[:8]
        row.update({SHORT.get(metric, metric): value_text(metrics.get(metric)) for metric in METRICS})
        row["promoted"] = "yes" if run.promoted else ""
        rows.append(row)
    return rows


def comparison(runs: list[StoredRun]) -> list[dict[str, str]]:
    """Key by key (rows) across the runs (columns): every setting that differs, the data, the metrics.

    A ``differs`` column marks rows whose values are not all equal.
    """
    keys = differing_keys(runs)
    rows = []

    def add(label: str, values: list[str]) -> None:
        rows.append({"key": label, **{run.run_id: value for run, value in zip(runs, values)},
                     "differs": "*" if len(set(values)) > 1 else ""})

    add("status", ["complete" if run.complete else "incomplete" for run in runs])
    for key in keys:
        add(key, [value_text(run.settings.get(key)) for run in runs])
    add("data fingerprint", [(run.manifest.get("dataset", {}).get("fingerprint") or "-")[:12] for run in runs])
    add("base model commit", [(run.manifest.get("base_model", {}).get("commit_sha") or "-")[:12] for run in runs])
    for metric in METRICS:
        add(metric, [value_text(run.manifest.get("metrics", {}).get(metric)) for run in runs])
    add("promoted", ["yes" if run.promoted else "" for run in runs])
    return rows
