"""The run spec's reference, read from the pydantic models themselves so it cannot drift from them.

Every key of :class:`peftpipe.spec.RunSpec` becomes one :class:`SpecEntry` (dotted key, type,
default, allowed values, description, an example). ``docs/spec.md`` is :func:`reference_markdown`'s
output, checked by a test; ``peftpipe spec explain KEY`` prints one entry.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from peftpipe.spec import RunSpec

REFERENCE_PATH = "docs/spec.md"


@dataclass(frozen=True)
class SpecEntry:
    key: str  # dotted, e.g. train.learning_rate
    type: str
    default: str  # YAML text, or "required"
    allowed: str  # the choices or the range; "" when any value of the type goes
    description: str
    example: str  # YAML text of one valid value
    section: bool  # a nested block (its keys follow as entries of their own)
    notes: str = ""  # a section's class docstring: what the block is for

    @property
    def yaml_example(self) -> str:
        """The example as it sits in a spec file: nested under its parents."""
        *parents, leaf = self.key.split(".")
        lines = [f"{'  ' * depth}{name}:" for depth, name in enumerate(parents)]
        lines.append(f"{'  ' * len(parents)}{leaf}: {self.example}")
        return "\n".join(lines)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The spec section class inside ``annotation`` (``FieldMapping | None`` -> FieldMapping)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def type_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        kinds = {type(value).__name__ for value in get_args(annotation)}
        return "one of" if len(kinds) > 1 else f"{kinds.pop()} (choice)"
    if origin in (Union, types.UnionType):
        parts = [type_text(arg) for arg in get_args(annotation) if arg is not type(None)]
        optional = type(None) in get_args(annotation)
        return " or ".join(parts) + (" or null" if optional else "")
    if origin is list:
        return f"list of {type_text(get_args(annotation)[0])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"mapping {type_text(key)} -> {type_text(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _literal_choices(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return list(get_args(arg))
    return []


CONSTRAINTS = ((annotated_types.Gt, "gt", "> {}"), (annotated_types.Ge, "ge", ">= {}"),
               (annotated_types.Lt, "lt", "< {}"), (annotated_types.Le, "le", "<= {}"),
               (annotated_types.MinLen, "min_length", "length >= {}"),
               (annotated_types.MaxLen, "max_length", "length <= {}"))


def allowed_text(field: FieldInfo) -> str:
    choices = _literal_choices(field.annotation)
    if choices:
        return ", ".join(yaml_text(choice) for choice in choices)
    bounds = [template.format(getattr(item, attribute))
              for item in field.metadata for kind, attribute, template in CONSTRAINTS if isinstance(item, kind)]
    return ", ".join(bounds)


def yaml_text(value: Any) -> str:
    """A value as one would write it in the spec (flow style, JSON-compatible YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _example(field: FieldInfo, default: Any) -> str:
    if field.examples:
        return yaml_text(field.examples[0])
    choices = _literal_choices(field.annotation)
    others = [choice for choice in choices if choice != default]
    if others:
        return yaml_text(others[0])
    if default is not PydanticUndefined and default is not None:
        return yaml_text(default)
    raise ValueError(f"no example: give the field `examples=[...]` ({field.description!r})")


def entries(model: type[BaseModel] = RunSpec, prefix: str = "") -> list[SpecEntry]:
    """Every key under ``model``, depth first in declaration order."""
    found: list[SpecEntry] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _model_in(field.annotation)
        description = " ".join((field.description or "").split())
        if section is not None:
            doc = " ".join((section.__doc__ or "").split("\n\n")[0].split()).replace("``", "`")
            optional = type(None) in get_args(field.annotation)
            found.append(SpecEntry(key, "section" + (" or null" if optional else ""),
                                   "null" if optional else "(its keys' defaults)", "",
                                   description or doc, "", True, doc))
            found.extend(entries(section, f"{key}."))
            continue
        default = _default(field)
        found.append(SpecEntry(key, type_text(field.annotation),
                               "required" if default is PydanticUndefined else yaml_text(default),
                               allowed_text(field), description, _example(field, default), False))
    return found


def lookup(key: str) -> SpecEntry | None:
    for entry in entries():
        if entry.key == key:
            return entry
    return None


def close_keys(key: str, limit: int = 5) -> list[str]:
    import difflib

    keys = [entry.key for entry in entries()]
    return difflib.get_close_matches(key, keys, n=limit, cutoff=0.5) or [k for k in keys if k.startswith(key)][:limit]


def explain_text(entry: SpecEntry) -> str:
    """One entry as ``peftpipe spec explain`` prints it."""
    lines = [entry.key, f"  type:        {entry.type}", f"  default:     {entry.default}"]
    if entry.allowed:
        lines.append(f"  allowed:     {entry.allowed}")
    lines.append(f"  description: {entry.description}")
    if entry.section:
        children = [e.key for e in entries() if e.key.startswith(entry.key + ".") and "." not in
                    e.key[len(entry.key) + 1:]]
        lines.append(f"  keys:        {', '.join(children)}")
    else:
        lines += ["  example:", *(f"    {line}" for line in entry.yaml_example.splitlines())]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else ""


def reference_markdown() -> str:
    """The whole reference (``docs/spec.md``): one table per section, in declaration order."""
    all_entries = entries()
    out = [
        "# Run spec reference",
        "",
        "<!-- Generated from the pydantic models of peftpipe/spec*.py by `peftpipe spec reference --write`."
        " Do not edit by hand: tests/test_spec_reference.py fails when this file and the models differ. -->",
        "",
        "A run spec is one YAML file; `peftpipe validate SPEC` checks it, `peftpipe spec explain KEY` prints one"
        " entry below, and `peftpipe init` writes a commented starter. Any key can be overridden on the command"
        " line with `--set KEY=VALUE` (e.g. `--set train.learning_rate=3e-4`). Relative paths are relative to the"
        " spec file; unknown keys are errors.",
        "",
    ]
    top = RunSpec.__name__
    groups: dict[str, list[SpecEntry]] = {top: []}
    sections = {entry.key: entry for entry in all_entries if entry.section}
    for entry in all_entries:
        parent = entry.key.rsplit(".", 1)[0] if "." in entry.key else top
        groups.setdefault(parent, []).append(entry)
    for parent, members in groups.items():
        heading = "Top level" if parent == top else f"`{parent}`"
        out += [f"## {heading}", ""]
        if parent in sections:
            out += [sections[parent].notes or sections[parent].description, ""]
        out += ["| key | type | default | allowed | description | example |", "|---|---|---|---|---|---|"]
        for entry in members:
            key = f"[`{entry.key}`](#{_anchor(entry.key)})" if entry.section else f"`{entry.key}`"
            example = f"`{entry.example}`" if entry.example else ""
            default = entry.default if entry.section or entry.default == "required" else f"`{entry.default}`"
            out.append(f"| {key} | {_cell(entry.type)} | {_cell(default)} | {_cell(entry.allowed)} | "
                       f"{_cell(entry.description)} | {_cell(example)} |")
        out.append("")
    return "\n".join(out)


def _anchor(key: str) -> str:
    """GitHub's heading anchor of ``## `key` ``: lowercase, dots and backticks dropped."""
    return key.lower().replace(".", "")
