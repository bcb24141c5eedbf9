"""Hydra command-line overrides, written so that Hydra reads back exactly the value we mean.

Grammar: https://hydra.cc/docs/advanced/override_grammar/basic/ (Hydra 1.3, what NeMo 1.x
pins). ``key=value`` only replaces a key the script's YAML declares (otherwise "Could not
override"); ``++key=value`` adds or replaces one outside that struct. Lists are ``[a,b]``.
"""

from __future__ import annotations

import re

# Characters Hydra accepts in an unquoted value; `$` is left out so that nothing we write can
# become an OmegaConf interpolation.
_UNQUOTED = re.compile(r"^[A-Za-z0-9_/\-+.%*@?|]+$")
# Unquoted text Hydra would read as something other than a string.
_NOT_A_STRING = re.compile(r"^(?:[-+]?[0-9_]*\.?[0-9_]+(?:[eE][-+]?[0-9]+)?|true|false|null|nan|inf|[-+]inf)$",
                           re.IGNORECASE)

HydraValue = str | int | float | bool | None | list


def hydra_string(text: str) -> str:
    """A double-quoted Hydra string for ``text``.

    Inside quotes Hydra only treats backslashes that precede a quote as escapes, so those are
    doubled; ``${`` would still be an interpolation and is refused.
    """
    if "${" in text:
        raise ValueError(f"{text!r} contains '${{', which Hydra would read as an interpolation")
    out: list[str] = []
    backslashes = 0
    for char in text:
        if char == "\\":
            backslashes += 1
            continue
        if char == '"':
            out.append("\\" * (2 * backslashes) + '\\"')
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes))  # a trailing backslash must not escape the closing quote
    return '"' + "".join(out) + '"'


def hydra_value(value: HydraValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if _UNQUOTED.match(value) and not _NOT_A_STRING.match(value):
        return value
    return hydra_string(value)


def override(key: str, value: HydraValue, *, outside_struct: bool = False) -> str:
    """``key=value``; ``++key=value`` for a key the script's YAML does not declare."""
    return f"{'++' if outside_struct else ''}{key}={hydra_value(value)}"
