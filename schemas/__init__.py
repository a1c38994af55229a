"""Pandera models of the exports, the instrument registry and the config schema."""
