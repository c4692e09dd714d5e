"""The package's shape: an engine that knows no method, a reader that needs no producer."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ray", "diffusers", "transformers")


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """file -> every module it imports (at any depth: lazy imports count too)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def test_the_engine_imports_no_method():
    for path, modules in imported_modules(ROOT / "factory" / "engine").items():
        methods = {m for m in modules if m.startswith(("factory.dive", "factory.dlcr"))}
        assert not methods, f"{path} imports {methods}"


def test_the_reader_needs_only_the_core_dependencies():
    """`manifests` imports the standard library, itself and the core dependencies; torch only for streaming."""
    core = {"pyarrow", "boto3", "botocore", "pydantic", "webdataset", "PIL", "numpy"}
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)[1]
    assert not set(re.findall(r'"([a-z]+)', dependencies)) & {"torch", "ray", "diffusers", "transformers"}
    for path, modules in imported_modules(ROOT / "manifests").items():
        for module in modules:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "manifests" or top in core:
                continue
            assert path == "manifests/streaming.py" and top == "torch", f"{path} imports {module}"


def test_help_and_spec_errors_load_no_model_library(tmp_path):
    """`factory --help` and a bad spec answer before torch, ray, diffusers or transformers are imported."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("run_id: x\noutput: out\nmodel: {preset: tiny}\nidentities: {source: bank}\nsampler: {steps: 0}\n")
    code = (
        "import sys\nfrom factory import cli\nfor argv in (['--help'], ['generate', sys.argv[1]]):\n"
        "    sys.argv = ['factory', *argv]\n    try:\n        cli.main()\n    except SystemExit:\n        pass\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True)
    assert "sampler.steps" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"
