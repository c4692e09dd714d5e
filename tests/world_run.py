"""The contract tests' run fixtures: runs rendered from the procedural world (see factory/world/run_writer.py)."""

from factory.world.run_writer import MODEL, write_demo_run, write_demo_shard

__all__ = ["MODEL", "write_demo_run", "write_demo_shard"]
