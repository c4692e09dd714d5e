"""Paper reproductions and identity experiments on the procedural world (`python -m experiments.NAME`)."""
