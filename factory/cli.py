"""The `factory` command line (its command names are part of the interface: scripts and docs call them).

Exit codes: 0 success; 1 the run failed a check (verify); 2 a usage or input
problem, printed as one line without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

try:
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.table import Table
    from rich.text import Text
except ModuleNotFoundError as missing:  # the reader-only install has no producer dependencies
    raise SystemExit(f"factory: {missing.name} is not installed; the producer is: pip install 'reid-factory[factory]'")

from factory import __version__
from factory.datasets import LOADERS
from factory.errors import FactoryError

Layout = Enum("Layout", {name: name for name in LOADERS}, type=str)
REID_HELP = "'world' (the shipped identity oracle, for world people) or a `factory train-reid` output folder."
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
    outfits: int = typer.Option(
        2, "--outfits", min=1, help="ltcc: outfits each person is seen in (1: as LTCC's single-outfit people)."
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
            outfits=outfits, on_image=lambda: progress.advance(task),
        )
    seconds = time.perf_counter() - start
    print(f"wrote {count} images ({layout.value} layout, {identities} identities) to {out} in {seconds:.1f} s "
          f"({count / seconds:.0f} images/s)")


def _method_command(command: str, example: str, report: Callable[[str, dict], None]) -> Callable:
    """A `factory COMMAND SPEC` that runs one method: every method takes the same options."""

    def run_command(
        spec: Path = typer.Argument(..., help=f"Job spec (YAML); see {example}."),
        out: str = typer.Option(None, "--out", help="Run URI, overriding the spec's output."),
        resume: bool = typer.Option(False, "--resume", help="Continue a run: make only its uncommitted shards."),
        force: bool = typer.Option(False, "--force", help="With --resume: accept a spec that differs from the run's."),
        repair: bool = typer.Option(
            False, "--repair", help="With --resume: verify the run first and make again every shard that fails."
        ),
        address: str = typer.Option(
            None,
            "--address",
            help="Ray cluster address. Default: RAY_ADDRESS, else a cluster `ray start` left running here, "
            "else a new local Ray; 'local' always starts a new one.",
        ),
        connect_timeout: float = typer.Option(
            30.0, "--connect-timeout", min=0.1, help="Seconds to wait for the cluster at --address to answer."
        ),
        local: bool = typer.Option(False, "--local", help="Run in this process without Ray (one actor per group)."),
    ) -> None:
        output, summary = _run_method(command, spec, out, resume, force, repair, address, connect_timeout, local)
        if summary.get("nothing_to_do"):
            print(f"{output}: nothing to do: all {summary['shards']} shards were already committed")
        else:
            report(output, summary)

    return run_command


def _report_generate(output: str, summary: dict) -> None:
    print(f"{output}: {summary['shards_made']} of {summary['shards']} shards made, "
          f"{summary['generated_images']} images generated in {summary['seconds']:.1f} s{_rate(summary)}")


def _report_inpaint(output: str, summary: dict) -> None:
    print(f"{output}: {summary['shards_made']} of {summary['shards']} shards made, "
          f"{summary['generated_images']} variants of {summary['source_images']} source images in "
          f"{summary['seconds']:.1f} s{_rate(summary)}")
    for skipped in summary["skipped"]:
        err.print(f"skipped {skipped['source']}: {skipped['reason']}", markup=False, highlight=False, soft_wrap=True)
    if summary["skipped_sources"]:
        err.print(f"{summary['skipped_sources']} source images skipped (listed in {output}/skipped/)", markup=False)


app.command(
    "generate",
    help="""Generate identity-consistent RGB-IR pairs (DiVE) on Ray into WebDataset shards + manifest.

    Generator actors per modality hold the spec's pipelines and take tasks (one shard,
    modality and camera each) from the driver's queue; each finished shard is stored,
    then committed by its manifest fragment. Everything a spec can get wrong is checked
    before the first image. Interrupted? Run the same command with --resume.
    """,
)(_method_command("generate", "jobs/specs/demo.yaml", _report_generate))

app.command(
    "inpaint",
    help="""DLCR clothes-changing expansion on Ray into WebDataset shards + manifest.

    Each source image is parsed into a clothing mask (a segmentation model, precomputed
    LIP label maps or the procedural world's), dressed in K outfits of other identities
    (prompts from a VLM + LLM, cached per outfit, or from attribute descriptions) by SD
    inpainting, and its own pixels are pasted back outside the mask. A variant keeps the
    identity, takes the target outfit's clothes id and names its source in `parent`.
    Unreadable source images are skipped and listed in RUN/skipped/. Interrupted? Run the
    same command with --resume.
    """,
)(_method_command("inpaint", "jobs/specs/inpaint-demo.yaml", _report_inpaint))


def _run_method(
    command: str,
    spec_path: Path,
    out: str | None,
    resume: bool,
    force: bool,
    repair: bool,
    address: str | None,
    connect_timeout: float,
    local: bool,
) -> tuple[str, dict]:
    """Validate the spec, run its method with a progress bar; (the run's URI, its _SUCCESS summary)."""
    from factory.methods import spec_class
    from factory.spec import load_spec

    spec = load_spec(spec_path, spec_class(command), output=out)
    _quiet_model_libraries()
    from factory.api import run

    started = time.perf_counter()
    try:
        with _progress(images=True) as progress:
            task = progress.add_task(f"{command} {spec.run_id}", total=None)

            def phase(text: str) -> None:
                err.print(f"[{time.perf_counter() - started:6.1f} s] {text}", markup=False, highlight=False)
                progress.update(task, description=f"{command} {spec.run_id}: {text.split(';')[0]}")

            summary = run(
                spec,
                on_phase=phase,
                resume=resume,
                force=force,
                repair=repair,
                use_ray=not local,
                address=address,
                connect_timeout_s=connect_timeout,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except KeyboardInterrupt:
        err.print(_interrupted(command, spec_path, out, spec.output), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    return spec.output, summary


def _interrupted(command: str, spec_path: Path, out: str | None, output: str) -> str:
    """What an interrupted run kept, and the command that finishes it."""
    from manifests.errors import RunNotFound
    from manifests.reader import Run

    try:
        run = Run(output)
        committed, total = len(run.listing().committed), run.info.total_shards
    except RunNotFound:
        return f"interrupted before the run started; nothing to resume in {output}"
    again = f"factory {command} {spec_path}{f' --out {out}' if out else ''} --resume"
    return f"interrupted; {committed} of {total} shards committed; resume with: {again}"


def _rate(summary: dict) -> str:
    rate = summary["generated_images_per_s"]
    return f", {rate:.2f} images/s" if rate else ""


@app.command()
def finetune(
    spec: Path = typer.Argument(..., help="Fine-tuning spec (YAML); see jobs/specs/finetune-demo.yaml."),
    out: str = typer.Option(None, "--out", help="Output folder, overriding the spec's output."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint, exactly."),
) -> None:
    """DiVE fine-tuning: UNet LoRA + one learned token per identity, camera codes in the captions.

    Writes checkpoints every `checkpoint_every` steps and, at the end, OUT/model/ with
    lora.safetensors, bank.safetensors, camera_codes.json and model.json: name them
    in a generation spec's model (path or preset, lora, bank, camera_codes).

    `mode: distill` (jobs/specs/distill-demo.yaml) takes such a model as its base and
    distils it into a few-step sampler: its OUT/model/ samples with
    `sampler: {scheduler: lcm, steps: 8}`, one UNet pass per step.
    """
    from factory.dive.finetune.spec import FinetuneSpec
    from factory.spec import load_spec

    parsed = load_spec(spec, FinetuneSpec, output=out)  # a bad spec is reported before the heavy imports
    _quiet_model_libraries()
    from factory.dive.finetune.run import finetune as run_finetune

    with _progress() as progress:
        task = progress.add_task("fine-tuning", total=parsed.steps)

        def step(part: str, done: int, total: int, loss: float) -> None:
            progress.update(task, completed=done, total=total, description=f"fine-tuning {part} loss {loss:.4f}")

        exported = run_finetune(parsed, resume=resume, on_step=step)
    for part, folder in exported.items():
        print(f"{part or 'model'}: {folder} (lora.safetensors, bank.safetensors, camera_codes.json)")


@app.command("train-reid")
def train_reid(
    spec: Path = typer.Argument(..., help="ReID spec (YAML); see jobs/specs/reid-demo.yaml."),
    out: str = typer.Option(None, "--out", help="Output folder, overriding the spec's output."),
) -> None:
    """Train a reference ReID model (AGW, CAJ or CAL) on real data and/or runs, then evaluate it.

    Real images come from data.dataset (a folder or world:// URI); runs' identities join
    as new classes with new camera ids (data.mix). DLCR variants (data.variants) join
    their source images with progressive learning. Writes OUT/checkpoints/,
    OUT/model.safetensors, OUT/train_log.jsonl and OUT/metrics.json (rank1, rank5,
    rank10, mAP, mINP per protocol and direction).
    """
    from factory.reid.spec import ReidSpec
    from factory.spec import load_spec

    parsed = load_spec(spec, ReidSpec, output=out)
    from factory.reid.run import train_reid as run_train_reid

    with _progress() as progress:
        task = progress.add_task("loading data", total=None)

        def report(phase: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=phase)

        metrics = run_train_reid(parsed, report=report)
    _print_metrics(metrics, Path(parsed.output))


@app.command("eval-reid")
def eval_reid(
    spec: Path = typer.Argument(..., help="The ReID spec the model was trained with (its output holds the model)."),
    out: str = typer.Option(None, "--out", help="The train-reid output folder, overriding the spec's output."),
) -> None:
    """Evaluate a trained model under its dataset's protocol (with DLCR refinement if the spec asks)."""
    from factory.reid.spec import ReidSpec
    from factory.spec import load_spec

    parsed = load_spec(spec, ReidSpec, output=out)
    from factory.reid.run import eval_reid as run_eval_reid

    _print_metrics(run_eval_reid(parsed), Path(parsed.output))


def _print_metrics(metrics: dict, folder: Path) -> None:
    if not metrics:
        print(f"{folder}: trained (no dataset named, so nothing evaluated)")
        return
    table = Table(title=f"{metrics['dataset']} ({folder / 'metrics.json'})")
    for column in ("protocol", "rank1", "rank5", "rank10", "mAP", "mINP", "queries", "skipped"):
        table.add_column(column, justify="left" if column == "protocol" else "right")
    for name, scores in metrics["results"].items():
        figures = ("–" if scores[k] is None else f"{scores[k]:.4f}" for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))
        table.add_row(name, *figures, str(scores["queries"]), str(scores["skipped_queries"]))
    out.print(table)
    skipped = {name: scores["skipped_queries"] for name, scores in metrics["results"].items() if scores["skipped_queries"]}
    for name, count in skipped.items():  # LTCC's people seen in one outfit have no clothes-changing match
        print(f"{name}: {count} queries had no valid gallery match and were left out of the figures")


@app.command()
def score(
    run: str = typer.Argument(..., help=RUN_HELP),
    reid: str = typer.Option("world", "--reid", help=REID_HELP),
    rescore: bool = typer.Option(False, "--rescore", help="Replace scores another model wrote (else refused)."),
) -> None:
    """Add a ReID model's identity score to every image of a run, without touching its tars.

    Per image: identity_score, the cosine to the identity's reference (a generated RGB-IR
    pair: the IR image to its RGB partner; otherwise the identity's real images, or its
    RGB ones), and identity_margin, that score minus the best cosine to another identity.
    They go into RUN/scores/ (one file per shard, stored atomically; a rerun scores only
    the shards not yet scored), appear as manifest columns to every reader, and gate
    training: ReidStream(min_identity_score=...) or a train-reid spec's run keys. A run
    holds one model's scores: --rescore replaces another model's.
    `factory stats RUN` shows how many images each threshold keeps.
    """
    _quiet_model_libraries()
    from factory.reid.score_run import score_run

    with _progress() as progress:
        task = progress.add_task(f"scoring {run}", total=None)
        summary = score_run(run, reid, rescore=rescore,
                            progress=lambda done, total: progress.update(task, completed=done, total=total))
    print(f"{summary['run']}: scored {summary['scored']} shard(s) with {reid} "
          f"({summary['already_scored']} of {summary['shards']} were scored before)")


@app.command()
def identity(
    run: str = typer.Argument(..., help=RUN_HELP),
    reid: str = typer.Option("world", "--reid", help=REID_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score a run's identity consistency: are its RGB and IR images of one identity one person?

    A ReID model embeds every RGB and IR image; printed are the ROC AUC of RGB-IR
    similarity for the same identity against different identities (0.5: no identity
    kept, 1: perfect), RGB->IR and IR->RGB rank-1 over the run's identities with chance
    (1/N) beside them, overall and per camera pair. The world oracle knows world people
    only; score runs of real people with a model trained on them (--reid DIR).
    """
    _quiet_model_libraries()
    from factory.reid.run_identity import score_run

    scores = score_run(run, reid)
    if as_json:
        print(json.dumps(scores, indent=2))
        return
    table = Table(title=f"{scores['run']}: identity consistency ({scores['identities']} identities, reid {reid})")
    table.add_column("cameras (rgb/ir)", no_wrap=True)  # a camera pair is read whole or not at all
    for column in ("AUC", "RGB->IR rank-1", "IR->RGB rank-1", "chance", "images (rgb/ir)"):
        table.add_column(column, justify="right")
    for name, row in {"all": scores, **scores["per_camera"]}.items():
        table.add_row(name, f"{row['auc']:.4f}", f"{row['rgb_to_ir_rank1']:.4f}", f"{row['ir_to_rgb_rank1']:.4f}",
                      f"{row['chance']:.4f}", f"{row['rgb_images']}/{row['ir_images']}")
    out.print(table)


@app.command()
def preview(
    run: str = typer.Argument(..., help=RUN_HELP),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    identities: int = typer.Option(8, min=1, help="Rows: one identity each."),
    samples: int = typer.Option(4, min=1, help="Samples per identity (each shows RGB and IR)."),
) -> None:
    """Draw a contact sheet of a run's pairs (or variants) to look at."""
    from factory.preview import preview as draw_preview

    sheet = draw_preview(run, out, identities=identities, samples_per_identity=samples)
    for damaged in sheet.damaged:
        err.print(f"skipped {damaged}", markup=False, highlight=False, soft_wrap=True)
    note = f" ({len(sheet.damaged)} damaged, drawn dark; `factory verify` checks the whole run)"
    print(f"{out}: {sheet.images} images{note if sheet.damaged else ''}")


@app.command()
def verify(
    run: str = typer.Argument(..., help=RUN_HELP),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Pass a run that still has uncommitted shards (e.g. while it runs)."
    ),
    workers: int = typer.Option(8, min=1, help="Shards checked concurrently."),
    strict: bool = typer.Option(
        False, "--strict", help="Fail on warnings too: stray files, dead writers' leftovers, no _SUCCESS.json."
    ),
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
    for warning in report.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
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
    if not report.ok(allow_incomplete, strict):
        counted = f", {len(report.warnings)} warnings (--strict)" if strict else ""
        err.print(f"FAILED: {len(report.problems)} problems, {len(report.not_committed)} shards not committed{counted}")
        if report.problems:
            err.print("make the failed shards again: factory generate|inpaint SPEC --resume --repair", markup=False)
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


@app.command("ls")
def list_runs(
    uri: str = typer.Argument("runs", help="A folder or s3://bucket/prefix to look under (default: runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table."),
) -> None:
    """The runs under a folder or bucket prefix: state (complete, running, incomplete), shards, samples, size."""
    from manifests.catalog import list_runs as find_runs
    from manifests.storage import scheme_of

    if scheme_of(uri) == "" and not Path(uri).is_dir():
        raise FactoryError(f"{uri}: no such folder")
    entries = find_runs(uri)
    if as_json:
        print(json.dumps([entry.__dict__ for entry in entries], indent=2))
        return
    if not entries:
        print(f"no runs under {uri}")
        return
    table = Table(title=f"runs under {uri}")
    for column in ("run", "run id", "state", "shards", "samples", "size"):
        table.add_column(column, justify="right" if column in ("shards", "samples", "size") else "left")
    for e in entries:
        planned = "?" if e.shards_planned is None else e.shards_planned
        samples = "" if e.samples is None else str(e.samples)
        shards = f"{e.shards_committed}/{planned}"
        table.add_row(e.uri, e.run_id, e.state, shards, samples, f"{e.size / 1e6:.1f} MB")
    out.print(table)


def _quiet_model_libraries() -> None:
    """Keep transformers' and diffusers' notes and loading bars out of the progress display, not their warnings.

    Set in the environment, so Ray actors started from here inherit it: a warning such as a
    model loading in another precision than asked is seen where the job was started.
    """
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "warning")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _ImagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} images/s" if task.speed else "")


def _progress(images: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([_ImagesPerSecond()] if images else []),
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
