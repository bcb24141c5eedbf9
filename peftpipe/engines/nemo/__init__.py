"""The nemo engine: NeMo 1.x commands (HF -> .nemo conversion, PEFT fine-tuning, generation)
rendered from the run spec for the NeMo container the job runs in.

Everything here is pure: it reads the spec, a model's ``config.json`` or a directory listing,
and returns argv lists, Hydra overrides and spec issues. NeMo itself only ever runs inside the
job's container (see ``profiles.py`` for which container holds which scripts).
"""
