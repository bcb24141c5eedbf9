"""The registered engines: name (``spec.engine``) -> the module whose ``ENGINE`` implements it.

Adding an engine is its folder plus one line here (see :mod:`peftpipe.engines`). Plain data, so
that the spec can list the valid names without importing any engine.
"""

ENGINES: dict[str, str] = {
    "hf": "peftpipe.engines.hf.engine",
    "nemo": "peftpipe.engines.nemo.engine",
    "automodel": "peftpipe.engines.automodel.engine",
}
