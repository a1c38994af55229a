"""Dagster code location for the therapy-outcomes pipeline."""
