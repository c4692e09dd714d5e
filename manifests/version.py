"""The package version, recorded in every run.json (one distribution ships both packages)."""

__version__ = "0.1.0"
