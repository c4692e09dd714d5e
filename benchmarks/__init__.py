"""Speed benchmarks: each prints its figures (`python -m benchmarks.NAME`, from the repository root)."""
