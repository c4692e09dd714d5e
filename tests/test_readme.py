"""The README's set-up section: exactly two commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_one_line_setup_commands():
    main_job, tests = readme_commands()
    for command in (main_job, tests):
        assert "\n" not in command
        assert "pip install torch==2.13.0 && " in command  # torch first, pinned
    assert "pytest" in tests and "pytest" not in main_job


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_commands()[1]
