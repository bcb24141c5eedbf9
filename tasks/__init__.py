"""Prefect tasks: one per stage, each a thin wrapper over one function of peftpipe.stages."""
