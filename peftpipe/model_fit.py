"""Does the spec fit the model? Target modules, family support per engine, the names ``auto`` stands for.

One check for every engine, run by ``peftpipe validate`` when the model's ``config.json`` is on
disk (``model.path``, or a Hub model already in the cache) and again by the fetch stage right
after the download, before any job is submitted. The model is inspected on the meta device
(``peftpipe.model_inspect``); this module itself is pure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftpipe.spec_issues import SpecIssue
from peftpipe.model_layout import (
    AUTO,
    ModelLayout,
    auto_ia3_targets,
    auto_lora_targets,
    target_hint,
    unknown_target_modules,
)

if TYPE_CHECKING:
    from peftpipe.spec import LoadedSpec, RunSpec


def resolved_peft(peft: dict[str, Any], layout: ModelLayout) -> dict[str, Any]:
    """The engine's peft settings with ``auto`` replaced by this model's module names."""
    resolved = dict(peft)
    if peft["method"] == "lora" and peft.get("target_modules") == AUTO:
        resolved["target_modules"] = auto_lora_targets(layout)
    if peft["method"] == "ia3":
        targets, feedforward = auto_ia3_targets(layout)
        if peft.get("target_modules") == AUTO:
            resolved["target_modules"] = targets
        if peft.get("feedforward_modules") == AUTO:
            resolved["feedforward_modules"] = [m for m in feedforward if m in resolved["target_modules"]]
    return resolved


def check_target_modules(spec: RunSpec, layout: ModelLayout | None) -> list[SpecIssue]:
    """Explicit target modules that are not modules of the model: the check of target names for engines
    that adapt the HF model's own modules (hf, automodel).

    ``layout``: None skips the check until the model's config.json is on disk. The nemo engine's
    names are NeMo's fused modules, which every converted model has; ``engines/nemo/validate.py``
    checks those without a model.
    """

    peft = spec.peft
    if layout is None:
        return []
    wanted: list[tuple[str, list[str]]] = []
    if peft.method == "lora" and peft.lora.target_modules != AUTO:
        wanted.append(("peft.lora.target_modules", list(peft.lora.target_modules)))
    if peft.method == "ia3":
        for key in ("target_modules", "feedforward_modules"):
            value = getattr(peft.ia3, key)
            if value != AUTO:
                wanted.append((f"peft.ia3.{key}", list(value)))
    issues = []
    for field, names in wanted:
        unknown = unknown_target_modules(layout, names)
        if unknown:
            issues.append(SpecIssue(field, f"{unknown} match no module of {layout.architecture} ({layout.model_type}),"
                                    f" whose attention and MLP projections are {target_hint(layout)}; peft would"
                                    " stop the job with 'Target modules ... not found'",
                                    f"use auto, or names from: {target_hint(layout)}"))
    if peft.method == "ia3" and not issues:
        ia3 = resolved_peft({"method": "ia3", **peft.ia3.model_dump()}, layout)
        extra = [m for m in ia3["feedforward_modules"] if m not in ia3["target_modules"]]
        if extra:
            issues.append(SpecIssue("peft.ia3.feedforward_modules", f"{extra} are not in target_modules"
                                    f" ({ia3['target_modules']} for this model)", "add them to target_modules"))
    return issues


def check_family(spec: RunSpec, layout: ModelLayout) -> list[SpecIssue]:
    """What the hf engine cannot train in this family, said before anything runs."""

    issues = []
    if spec.engine == "hf" and spec.peft.method == "lora" and spec.peft.lora.target_modules == AUTO \
            and not auto_lora_targets(layout):
        issues.append(SpecIssue("peft.lora.target_modules", f"auto found no attention or MLP projection in"
                                f" {layout.architecture}", "name the modules to adapt"))
    return issues


def model_issues(spec: RunSpec, config: dict[str, Any]) -> tuple[ModelLayout | None, list[SpecIssue]]:
    """The model's layout and every problem of the spec with it (an unsupported model included)."""
    from peftpipe.model_inspect import UnsupportedModel, inspect_config

    try:
        layout = inspect_config(config)
    except UnsupportedModel as error:
        if spec.engine == "nemo":
            return None, []  # the nemo engine says which architectures it converts
        return None, [SpecIssue("model", f"is not supported by the hf engine: {error}",
                                "use a decoder-only causal LM that transformers builds without remote code")]
    # The nemo engine's target names need no model: check_nemo has checked them already.
    targets = [] if spec.engine == "nemo" else check_target_modules(spec, layout)
    return layout, targets + check_family(spec, layout)


def local_config(loaded: LoadedSpec) -> dict[str, Any] | None:
    """The model's config.json when it is on disk without a download: a model directory or the Hub cache."""
    model = loaded.spec.model
    if model.path is not None:
        candidate: Path | None = loaded.resolve(model.path) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cache = str(Path(model.cache_dir).expanduser()) if model.cache_dir else None
        found = try_to_load_from_cache(model.repo_id, "config.json", cache_dir=cache, revision=model.revision)
        candidate = Path(found) if isinstance(found, str) else None
    if candidate is None or not candidate.is_file():
        return None
    try:
        return json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
