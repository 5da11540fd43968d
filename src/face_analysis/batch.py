"""Batch runs: find the inputs, name their results, analyse them in worker processes.

Usage::

    jobs = plan_jobs([Path("photos")], Path("out"), recursive=True)
    for job, result in run_jobs(jobs, AnalyzerConfig(), workers=2):
        ...
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .annotate import ANNOTATED_SUFFIX, annotated_path, write_annotated
from .errors import FINAL_ERROR_CODES
from .results import ImageResult, output_names
from .settings import AnalyzerConfig

if TYPE_CHECKING:  # the models' code is loaded only where images are analysed
    from .pipeline import Analyzer

__all__ = ["IMAGE_SUFFIXES", "Job", "plan_jobs", "run_jobs"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True, slots=True)
class Job:
    """One input file, its id in the results (path relative to its input root), its result file.

    annotated: where its annotated image goes (None: not asked for).
    """

    source: Path
    image_id: str
    output: Path
    annotated: Path | None = None


class PlanError(ValueError):
    """The inputs cannot be analysed as asked (e.g. two would write the same result)."""


def _discover(root: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(
        path
        for path in root.glob(pattern)
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and not path.name.endswith(ANNOTATED_SUFFIX)  # our own output, when it shares the folder
    )


def plan_jobs(
    paths: Sequence[Path], output_dir: Path, recursive: bool = False, annotate: bool = False
) -> list[Job]:
    """Every input with the file its result goes to (and its annotated image, with `annotate`).

    Folders contribute their image files (by extension; sub-folders with `recursive`,
    mirrored in the output); files named explicitly are always inputs, whatever their type.

    Raises:
        PlanError: a path does not exist, or two inputs would write the same result file.
    """
    relative: list[tuple[Path, PurePosixPath]] = []
    for path in paths:
        if path.is_dir():
            relative += [
                (f, PurePosixPath(f.relative_to(path).as_posix())) for f in _discover(path, recursive)
            ]
        elif path.exists():
            relative.append((path, PurePosixPath(path.name)))
        else:
            raise PlanError(f"{path} does not exist")
    names = output_names(rel for _, rel in relative)
    jobs: list[Job] = []
    claimed: dict[Path, Path] = {}
    for source, rel in relative:
        output = output_dir / names[rel]
        if output in claimed:
            raise PlanError(
                f"{claimed[output]} and {source} would both write {output}; "
                "analyse them into different output folders"
            )
        claimed[output] = source
        annotated = annotated_path(output) if annotate else None
        jobs.append(Job(source=source, image_id=str(rel), output=output, annotated=annotated))
    return jobs


def is_up_to_date(job: Job) -> bool:
    """A result exists and is newer than its input; so is its annotated image, if one is asked for
    (an error result has none)."""
    try:
        source_time = job.source.stat().st_mtime
        if job.output.stat().st_mtime < source_time:
            return False
        if job.annotated is None or (job.annotated.exists() and job.annotated.stat().st_mtime >= source_time):
            return True
        return json.loads(job.output.read_text(encoding="utf-8")).get("error") is not None
    except (OSError, ValueError, AttributeError):
        return False


def needs_analysis(job: Job) -> bool:
    """Not up to date, or up to date but an error whose cause may have passed (a detector that
    was unavailable or refused the key, an internal error): such inputs are tried again."""
    if not is_up_to_date(job):
        return True
    try:
        error = json.loads(job.output.read_text(encoding="utf-8")).get("error")
    except (OSError, ValueError, AttributeError):
        return True
    return isinstance(error, dict) and error.get("code") not in FINAL_ERROR_CODES


_worker_analyzer: Analyzer | None = None


def _init_worker(config: AnalyzerConfig) -> None:
    from .pipeline import Analyzer

    global _worker_analyzer
    _worker_analyzer = Analyzer(config)


def _analyze_in_worker(job: Job) -> tuple[Job, ImageResult]:
    assert _worker_analyzer is not None
    return _run_job(_worker_analyzer, job)


def _run_job(analyzer: Analyzer, job: Job) -> tuple[Job, ImageResult]:
    """Analyse; draw the annotated image, if asked for, from the pixels just decoded (before the
    JSON is written, so a result present means its annotated image is too)."""
    if job.annotated is None:
        return job, analyzer.analyze(job.source, image_id=job.image_id)
    result, image = analyzer.analyze_with_image(job.source, image_id=job.image_id)
    write_annotated(job.annotated, image, result)
    return job, result


def run_jobs(
    jobs: Sequence[Job], config: AnalyzerConfig, workers: int = 1
) -> Iterator[tuple[Job, ImageResult]]:
    """Analyse the jobs; yields each job with its result as it completes (any order).

    Each worker process loads the models once and gets an equal share of the cores (unless
    `config.threads` says how many each model takes).
    """
    from .pipeline import Analyzer
    from .steps import check_models

    if workers <= 1 or len(jobs) <= 1:
        analyzer = Analyzer(config)
        for job in jobs:
            yield _run_job(analyzer, job)
        return
    threads = config.threads or max(1, (os.cpu_count() or 1) // workers)
    worker_config = config.model_copy(update={"threads": threads})
    # Fail fast, in this process, on a missing or corrupt model rather than in every worker.
    check_models(worker_config)
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (worker_config,)) as pool:
        yield from pool.imap_unordered(_analyze_in_worker, jobs)
