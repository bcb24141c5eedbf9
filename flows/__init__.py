"""Prefect flows: the user-facing jobs, each reading top to bottom as its list of stages."""
