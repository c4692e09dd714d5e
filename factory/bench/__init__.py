"""Benchmark scripts: each prints its figures, run the same way every time (`python -m factory.bench.NAME`)."""
