"""Prefect tasks: one per pipeline stage, each a thin wrapper over the library."""
