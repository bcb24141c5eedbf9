"""Environment variable names: which are well-formed, and which hold credentials.

One list for every place that decides: the run spec refuses credential names in
``execution.slurm.env`` (they would be written into job scripts), and local processes and Slurm
commands (whose environment ``sbatch`` saves with the job) start without them. Jobs never need
a credential: the model is fetched and the artifacts are published by the flow's own process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# What a shell accepts as a variable name; anything else in `export NAME=...` is shell code.
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Credential names, for messages; CREDENTIAL_NAME below is the same list as one expression.
CREDENTIAL_PATTERNS = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*API_KEY*", "*APIKEY*",
                       "*ACCESS_KEY*", "*PRIVATE_KEY*", "*_KEY", "*_KEY_ID", "AWS_*")
# TOKEN(?!IZER): TOKENIZERS_PARALLELISM names a setting, not a token.
CREDENTIAL_NAME = re.compile(r"TOKEN(?!IZER)|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY"
                             r"|_KEY$|_KEY_ID$|^AWS_")


def is_credential_name(name: str) -> bool:
    """Whether ``name`` looks like it holds a credential (HF_TOKEN, WANDB_API_KEY, AWS_ACCESS_KEY_ID, ...)."""
    return CREDENTIAL_NAME.search(name.upper()) is not None


def env_name_problem(name: str) -> str | None:
    """Why ``name`` may not be set in a job's environment, or None."""
    if not ENV_NAME_PATTERN.match(name):
        return "is not a variable name (letters, digits and _, not starting with a digit)"
    if is_credential_name(name):
        return f"looks like a secret (credential names: {', '.join(CREDENTIAL_PATTERNS)})"
    return None


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less every credential-looking name."""
    return {name: value for name, value in environ.items() if not is_credential_name(name)}
