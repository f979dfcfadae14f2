"""Benchmarks of the HieraQuery cascade: ``python -m bench.run`` (see BENCHMARKS.md)."""
