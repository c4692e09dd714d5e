"""The `factory` command line (command names are fixed by DESIGN.md §5).

Exit codes: 0 success; 1 the run failed a check (verify); 2 a usage or input
problem, printed as one line without a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from factory import __version__
from factory.datasets import LOADERS
from factory.errors import FactoryError

Layout = Enum("Layout", {name: name for name in LOADERS}, type=str)
RUN_HELP = "Run URI: a local folder or s3://bucket/prefix/RUN_ID (S3 endpoint from AWS_ENDPOINT_URL)."

app = typer.Typer(
    help="Synthetic person re-identification data at cluster scale: identity-consistent "
    "RGB-IR pairs (DiVE) and clothes-changing variants (DLCR) as WebDataset shards "
    "with a Parquet manifest.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"factory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def world(
    layout: Layout = typer.Option(..., "--layout", help="Dataset layout to write."),
    out: Path = typer.Option(..., "--out", help="Folder to create (must be empty or absent)."),
    identities: int = typer.Option(..., "--identities", min=1, help="People to render."),
    seed: int = typer.Option(0, "--seed", help="World seed: same seed, same bytes."),
    images_per_camera: int = typer.Option(
        None, "--images-per-camera", min=1, help="Images per person and camera (default: per layout)."
    ),
) -> None:
    """Render procedural pedestrians in a real ReID dataset's exact layout.

    Images go where SYSU-MM01, RegDB, LLCM, Market-1501, PRCC or LTCC keep them, with
    their index files; each image's LIP clothing mask and outfit description go to
    OUT/world/ beside them. RGB cameras render colour, IR cameras a thermal-like grey.
    """
    from factory.world.layouts import write_world

    if out.exists() and any(out.iterdir()):
        raise FactoryError(f"{out} is not empty; choose a new folder")
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"rendering {layout.value}", total=None)
        count = write_world(
            layout.value, out, identities=identities, seed=seed, images_per_camera=images_per_camera,
            on_image=lambda: progress.advance(task),
        )
    seconds = time.perf_counter() - start
    print(f"wrote {count} images ({layout.value} layout, {identities} identities) to {out} in {seconds:.1f} s "
          f"({count / seconds:.0f} images/s)")


@app.command()
def verify(
    run: str = typer.Argument(..., help=RUN_HELP),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Pass a run that still has uncommitted shards (e.g. while it runs)."
    ),
    workers: int = typer.Option(8, min=1, help="Shards checked concurrently."),
) -> None:
    """Re-read every committed shard and check it against the manifest.

    Checks each member's sha256, offset and size, the sample and member counts and
    the whole tar; lists shards not yet committed, orphan tars (no fragment) and
    fragments whose tar is missing. Exits 1 on any problem, naming shard and key.
    """
    from manifests.verify import verify_run

    with _progress() as progress:
        task = progress.add_task("verifying shards", total=None)
        report = verify_run(
            run, workers=workers, on_progress=lambda done, total: progress.update(task, completed=done, total=total)
        )

    for problem in report.problems:
        err.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    planned = f" of {report.total_shards}" if report.total_shards is not None else ""
    out.print(
        f"{report.run_uri}: {len(report.committed)}{planned} shards committed, "
        f"{report.members_checked} members, {report.bytes_checked / 1e6:.1f} MB checked",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.not_committed:
        shown = ", ".join(f"{i:06d}" for i in report.not_committed[:10])
        more = " …" if len(report.not_committed) > 10 else ""
        err.print(
            f"not committed: {len(report.not_committed)} shards ({shown}{more}); resume the job to make them",
            markup=False,
            soft_wrap=True,
        )
    if report.orphan_tars:
        err.print(f"orphan tars (no fragment, resume overwrites them): {len(report.orphan_tars)}", markup=False)
    if not report.ok(allow_incomplete):
        err.print(f"FAILED: {len(report.problems)} problems, {len(report.not_committed)} shards not committed")
        raise typer.Exit(1)
    out.print("OK")


@app.command()
def stats(
    run: str = typer.Argument(..., help=RUN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Counts per modality, origin and camera; identities, outfits, sizes and throughput."""
    from manifests.stats import run_stats

    numbers = run_stats(run)
    if as_json:
        print(json.dumps(numbers, indent=2, default=str))
        return
    table = Table(title=numbers["run"], show_header=False)
    for name, value in numbers.items():
        if name != "run":
            text = json.dumps(value, default=str) if isinstance(value, dict) else str(value)
            table.add_row(name, text)
    out.print(table)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def main() -> None:
    """Console-script entry: user errors become one line and exit code 2."""
    try:
        app()
    except FactoryError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
