"""Benchmarks for syncd: runnable scripts that print figures (see bench/README.md)."""
