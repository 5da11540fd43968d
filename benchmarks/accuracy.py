"""Accuracy on the dev sets in ../shared/datasets: WIDER FACE detection AP, UTKFace age/gender.

Usage::

    python benchmarks/accuracy.py                      # both benchmarks, default settings
    python benchmarks/accuracy.py wider --detect-size 640 1024
    python benchmarks/accuracy.py utkface --limit 300 --json /tmp/utk.json
    python benchmarks/accuracy.py utkface --no-landmarks   # faces aligned from the box only

The datasets folder is `<repo>/../shared/datasets` unless `--datasets DIR` or the environment
variable FACE_ANALYSIS_DATASETS says otherwise. The data are research-only and never part of the
repository: when the folder (or the part a benchmark needs) is absent, the script prints a note
and exits 0.

- `wider`: the official WIDER FACE protocol, ported from the eval kit's `evaluation.py`
  (`bbox_overlaps`, `image_eval`, `img_pr_info`, `dataset_pr_info`, `voc_ap`): IoU >= 0.5 with
  pixel-inclusive boxes (+1 on width and height), faces outside a setting's list are ignore
  regions, scores min-max normalised over the whole set, 1000 thresholds, VOC all-point AP.
  Boxes are compared in the original 1024 px wide frame (the official integer boxes;
  detections on the ~0.41x delivered images scaled up), as the kit scores them; this gives
  DESIGN.md section 6's reference numbers. `--coords delivered` compares in delivered pixels.
- `utkface`: DESIGN.md section 8: the largest detected face per image; detection rate, age MAE,
  gender accuracy (all and ages >= 10), how often the true age is inside the reported range,
  expected calibration error of `age_confidence` and `gender_confidence`, all per age bin too.
  `--no-landmarks` drops CenterFace's landmarks so faces are aligned from their box
  (`box_landmarks`), as for a detector that gives boxes only (Roboflow): the cost of no landmarks.

The helpers (`wider_ap`, `expected_calibration_error`, `utkface_records`, `summarize_utkface`,
...) are importable for other scripts: `from benchmarks.accuracy import utkface_records` from
the repository root, or put `benchmarks/` on sys.path and `import accuracy`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from face_analysis import Analyzer, AnalyzerConfig
from face_analysis.detection import Detection, FaceDetector
from face_analysis.imaging import RGBImage, decode_image
from face_analysis.pipeline import PRECISIONS
from face_analysis.runtime import RUNTIMES

__all__ = [
    "AGE_BINS",
    "BoxOnlyDetector",
    "UtkLabel",
    "UtkRecord",
    "UtkSummary",
    "WiderImage",
    "WiderReport",
    "age_bin",
    "age_in_range",
    "bbox_overlaps",
    "dataset_pr_info",
    "expected_calibration_error",
    "image_eval",
    "img_pr_info",
    "load_utkface_labels",
    "load_wider_ground_truth",
    "norm_score",
    "resolve_datasets_dir",
    "run_wider",
    "select_even",
    "summarize_utkface",
    "utkface_records",
    "voc_ap",
    "wider_ap",
    "wider_detections",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
DATASETS_ENV = "FACE_ANALYSIS_DATASETS"
WIDER_DIR = "wider_val_subset"
UTKFACE_DIR = "utkface_agegender"

WIDER_SETTINGS = ("easy", "medium", "hard")
WIDER_COORDS = ("original", "delivered")
WIDER_IOU_THRESHOLD = 0.5
WIDER_THRESH_NUM = 1000
WIDER_DETECT_SIZE: int | None = 640
WIDER_MIN_CONFIDENCE = 0.05
UTK_DETECT_SIZE: int | None = 640
UTK_MIN_CONFIDENCE = 0.5

# True-age bins for per-bin figures: (label, lowest age, highest age or None = open-ended).
AGE_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("0-2", 0, 2),
    ("3-9", 3, 9),
    *((f"{low}-{low + 9}", low, low + 9) for low in range(10, 70, 10)),
    ("70+", 70, None),
)

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- datasets


def resolve_datasets_dir(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """`--datasets` if given, else $FACE_ANALYSIS_DATASETS, else `<repo>/../shared/datasets`."""
    if cli_value:
        return Path(cli_value)
    env = os.environ.get(DATASETS_ENV)
    return Path(env) if env else DEFAULT_DATASETS


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _sub_dir(datasets_dir: Path, name: str, marker: str) -> Path:
    """The benchmark's folder; `datasets_dir` may be the datasets root or the folder itself."""
    return datasets_dir if (datasets_dir / marker).is_file() else datasets_dir / name


# --------------------------------------------------------------------------- WIDER FACE


@dataclass(frozen=True)
class WiderImage:
    """Ground truth of one image: every face's box and which settings list it."""

    file: str  # relative to the wider folder, e.g. "images/0--Parade/0_Parade_Parade_0_102.jpg"
    boxes: FloatArray  # n x 4: x, y, w, h in the ground truth's pixels (see `coords`)
    in_setting: dict[str, NDArray[np.bool_]]  # setting -> n flags (False = ignore region)
    scale: float  # delivered-image pixels x scale = ground-truth pixels


def load_wider_ground_truth(wider_dir: Path, coords: str = "original") -> dict[str, WiderImage]:
    """`images.csv` + `boxes.csv` -> ground truth per image, in `images.csv` order.

    coords "original": the official integer boxes in the original (1024 px wide) image, as the
    eval kit sees them; detections on the delivered ~0.41x image are scaled up to match, so the
    protocol's +1 is one original pixel. coords "delivered": the boxes scaled to the delivered
    image (the +1 is then ~2.5 original pixels, which lets more tiny faces reach IoU 0.5).
    """
    if coords not in WIDER_COORDS:
        raise ValueError(f"coords must be one of {WIDER_COORDS}")
    keys = ("x_orig", "y_orig", "w_orig", "h_orig") if coords == "original" else "xywh"
    faces: dict[str, list[dict[str, str]]] = {}
    for row in _read_csv(wider_dir / "boxes.csv"):
        faces.setdefault(row["file"], []).append(row)
    truth: dict[str, WiderImage] = {}
    for image in _read_csv(wider_dir / "images.csv"):
        rows = faces.get(image["file"], [])
        boxes = np.array([[float(r[k]) for k in keys] for r in rows], dtype=np.float64).reshape(-1, 4)
        flags = {s: np.array([r[s] == "1" for r in rows], dtype=np.bool_) for s in WIDER_SETTINGS}
        scale = 1 / float(image["scale"]) if coords == "original" else 1.0
        truth[image["file"]] = WiderImage(image["file"], boxes, flags, scale)
    return truth


def bbox_overlaps(boxes: FloatArray, query_boxes: FloatArray) -> FloatArray:
    """IoU of every box with every query box (x1, y1, x2, y2), pixel-inclusive (+1) as in the
    eval kit's Cython `bbox_overlaps`; n x k."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    query_boxes = np.asarray(query_boxes, dtype=np.float64).reshape(-1, 4)
    box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    query_area = (query_boxes[:, 2] - query_boxes[:, 0] + 1) * (query_boxes[:, 3] - query_boxes[:, 1] + 1)
    iw = (
        np.minimum(boxes[:, None, 2], query_boxes[None, :, 2])
        - np.maximum(boxes[:, None, 0], query_boxes[None, :, 0])
        + 1
    )
    ih = (
        np.minimum(boxes[:, None, 3], query_boxes[None, :, 3])
        - np.maximum(boxes[:, None, 1], query_boxes[None, :, 1])
        + 1
    )
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = box_area[:, None] + query_area[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)


def norm_score(predictions: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
    """Scores min-max normalised over the whole set (the eval kit's `norm_score`; copies)."""
    max_score, min_score = 0.0, 1.0  # the kit's initial values
    for pred in predictions.values():
        if len(pred):
            max_score = max(float(pred[:, 4].max()), max_score)
            min_score = min(float(pred[:, 4].min()), min_score)
    diff = max_score - min_score
    normalised: dict[str, FloatArray] = {}
    for key, pred in predictions.items():
        out = np.array(pred, dtype=np.float64).reshape(-1, 5)
        if len(out) and diff > 0:
            out[:, 4] = (out[:, 4] - min_score) / diff
        normalised[key] = out
    return normalised


def image_eval(
    pred: FloatArray, gt: FloatArray, ignore: NDArray[np.integer], iou_thresh: float
) -> tuple[FloatArray, FloatArray]:
    """One image, as the kit's `image_eval`.

    pred: n x 5 (x, y, w, h, score); gt: k x 4 (x, y, w, h); ignore: k flags, 1 = face in the
    setting, 0 = ignore region.

    Returns (pred_recall, proposal_list): after each prediction (in the given order), how many
    setting faces have been found; and 1 per prediction that counts as a proposal, -1 for one
    that landed on an ignore region. A prediction takes its best-overlapping face (no
    one-to-one assignment: a second hit on a found face is a counted proposal, not a recall).
    """
    _pred = np.array(pred, dtype=np.float64)
    _gt = np.array(gt, dtype=np.float64)
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])

    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = bbox_overlaps(_pred[:, :4], _gt)

    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), int(gt_overlap.argmax())
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        pred_recall[h] = np.count_nonzero(recall_list == 1)
    return pred_recall, proposal_list


def img_pr_info(
    thresh_num: int, pred_info: FloatArray, proposal_list: FloatArray, pred_recall: FloatArray
) -> FloatArray:
    """Per threshold t (score >= 1 - (t+1)/thresh_num): (proposals, recalled faces) of one image.

    The kit loops over thresholds and takes the LAST prediction scoring >= the threshold; this is
    the same computation, vectorised over thresholds.
    """
    thresholds = 1 - (np.arange(thresh_num) + 1) / thresh_num
    pr_info = np.zeros((thresh_num, 2), dtype=np.float64)
    if len(pred_info) == 0:
        return pr_info
    above = pred_info[None, :, 4] >= thresholds[:, None]  # thresh_num x n
    any_above = above.any(axis=1)
    last = above.shape[1] - 1 - np.argmax(above[:, ::-1], axis=1)
    proposals = np.cumsum(proposal_list == 1)
    pr_info[any_above, 0] = proposals[last[any_above]]
    pr_info[any_above, 1] = pred_recall[last[any_above]]
    return pr_info


def dataset_pr_info(thresh_num: int, pr_curve: FloatArray, count_face: int) -> FloatArray:
    """Summed (proposals, recalled) -> (precision, recall) per threshold.

    The kit divides 0/0 (no proposal above a threshold anywhere) into NaN, which would poison
    its AP; here such a precision is 0. Those points all have recall 0, so wherever the kit's AP
    is a number this gives the same number.
    """
    _pr_curve = np.zeros((thresh_num, 2))
    proposals, recalled = pr_curve[:, 0], pr_curve[:, 1]
    _pr_curve[:, 0] = np.divide(recalled, proposals, out=np.zeros_like(recalled), where=proposals > 0)
    _pr_curve[:, 1] = recalled / count_face if count_face else 0.0
    return _pr_curve


def voc_ap(rec: FloatArray, prec: FloatArray) -> float:
    """Area under the precision envelope, all points (the kit's `voc_ap`)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for k in range(mpre.size - 1, 0, -1):
        mpre[k - 1] = np.maximum(mpre[k - 1], mpre[k])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def wider_ap(
    predictions: Mapping[str, FloatArray],
    ground_truth: Mapping[str, WiderImage],
    iou_thresh: float = WIDER_IOU_THRESHOLD,
    thresh_num: int = WIDER_THRESH_NUM,
) -> dict[str, float]:
    """AP per setting (easy, medium, hard) by the official protocol.

    predictions: image file -> n x 5 (x, y, w, h, score), in the ground truth's pixels; an image
    without an entry has no detections. Each image's predictions are sorted by falling score
    first (as detectors write them; the kit's threshold sweep assumes that order).
    """
    ordered = {
        key: pred[np.argsort(-pred[:, 4], kind="stable")] if len(pred) else pred
        for key, pred in norm_score(predictions).items()
    }
    empty = np.zeros((0, 5))
    aps: dict[str, float] = {}
    for setting in WIDER_SETTINGS:
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2), dtype=np.float64)
        for file, truth in ground_truth.items():
            pred_info = ordered.get(file, empty)
            keep = truth.in_setting[setting]
            count_face += int(keep.sum())
            if len(truth.boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = keep.astype(np.int64)
            pred_recall, proposal_list = image_eval(pred_info, truth.boxes, ignore, iou_thresh)
            pr_curve += img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        curve = dataset_pr_info(thresh_num, pr_curve, count_face)
        aps[setting] = voc_ap(curve[:, 1], curve[:, 0])
    return aps


def wider_detections(
    detect: Callable[[RGBImage], Sequence[Detection]],
    wider_dir: Path,
    ground_truth: Mapping[str, WiderImage],
    progress: bool | None = None,
) -> tuple[dict[str, FloatArray], list[float]]:
    """Run `detect` (e.g. an `Analyzer`'s `detect`) on each image of the ground truth.

    Returns (file -> n x 5 x, y, w, h, score in the ground truth's pixels; ms per image).
    Only detection is timed (resize + network + decoding of the outputs), not JPEG decoding.
    """
    predictions: dict[str, FloatArray] = {}
    times_ms: list[float] = []
    for file, truth in tqdm(ground_truth.items(), desc="wider", unit="img", disable=_no_bar(progress)):
        rgb = decode_image((wider_dir / file).read_bytes())
        start = time.perf_counter()
        detections = detect(rgb)
        times_ms.append((time.perf_counter() - start) * 1000)
        pred = np.array(
            [[d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1], d.score] for d in detections],
            dtype=np.float64,
        ).reshape(-1, 5)
        pred[:, :4] *= truth.scale
        predictions[file] = pred
    return predictions, times_ms


@dataclass(frozen=True)
class WiderReport:
    detect_size: int | None
    min_confidence: float
    coords: str
    images: int
    faces: dict[str, int]  # setting -> faces in its list (+ "all")
    ap: dict[str, float]
    detections: int
    mean_detect_ms: float
    median_detect_ms: float


def run_wider(
    wider_dir: Path,
    detect_size: int | None = WIDER_DETECT_SIZE,
    min_confidence: float = WIDER_MIN_CONFIDENCE,
    engine: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    coords: str = "original",
) -> WiderReport:
    """Detect on every dev image with the given settings and score it (`wider_ap`).

    engine: further AnalyzerConfig fields (threads, runtime, precision)."""
    truth = load_wider_ground_truth(wider_dir, coords)
    analyzer = _analyzer(detect_size, min_confidence, engine or {})
    predictions, times_ms = wider_detections(analyzer.detect, wider_dir, truth, progress)
    faces = {s: int(sum(t.in_setting[s].sum() for t in truth.values())) for s in WIDER_SETTINGS}
    faces["all"] = sum(len(t.boxes) for t in truth.values())
    return WiderReport(
        detect_size=detect_size,
        min_confidence=min_confidence,
        coords=coords,
        images=len(truth),
        faces=faces,
        ap=wider_ap(predictions, truth),
        detections=sum(len(p) for p in predictions.values()),
        mean_detect_ms=statistics.fmean(times_ms) if times_ms else float("nan"),
        median_detect_ms=statistics.median(times_ms) if times_ms else float("nan"),
    )


def format_wider(report: WiderReport) -> str:
    size = "native" if report.detect_size is None else str(report.detect_size)
    ap = report.ap
    return (
        f"WIDER dev  detect_size={size} min_confidence={report.min_confidence:g} "
        f"coords={report.coords}: "
        f"AP easy {ap['easy']:.3f}  medium {ap['medium']:.3f}  hard {ap['hard']:.3f}  | "
        f"{report.images} images, {report.faces['all']} faces "
        f"(easy {report.faces['easy']}, medium {report.faces['medium']}, "
        f"hard {report.faces['hard']}), {report.detections} detections, "
        f"detect {report.mean_detect_ms:.1f} ms/image mean ({report.median_detect_ms:.1f} median)"
    )


# --------------------------------------------------------------------------- UTKFace


@dataclass(frozen=True)
class UtkLabel:
    file: str
    age: int
    gender: str  # "Male" / "Female" (the library's spelling)
    race: str


@dataclass
class UtkRecord:
    """One UTKFace image: its labels and the estimates for the largest detected face.

    The face fields are None when no face was found (or the image failed: see `error`).
    """

    file: str
    true_age: int
    true_gender: str  # "Male" / "Female"
    race: str
    faces: int = 0  # faces detected in the image
    bbox: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 in the image's pixels
    detection_confidence: float | None = None
    age_years: float | None = None
    age_range: str | None = None  # e.g. "20-30": 20 <= age < 30
    age_confidence: float | None = None
    gender: str | None = None
    gender_confidence: float | None = None
    error: str | None = None
    ms: float = 0.0  # Analyzer.analyze time (decode + detect + age/gender)

    @property
    def detected(self) -> bool:
        return self.age_years is not None

    @property
    def age_correct(self) -> bool | None:
        """Is the true age inside the reported range?"""
        return None if self.age_range is None else age_in_range(self.true_age, self.age_range)

    @property
    def gender_correct(self) -> bool | None:
        return None if self.gender is None else self.gender == self.true_gender

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_utkface_labels(utk_dir: Path) -> list[UtkLabel]:
    """`labels.csv` (file, age, gender male/female, race) in file order."""
    return [
        UtkLabel(row["file"], int(row["age"]), row["gender"].capitalize(), row["race"])
        for row in _read_csv(utk_dir / "labels.csv")
    ]


def select_even(labels: Sequence[UtkLabel], limit: int | None) -> list[UtkLabel]:
    """A deterministic subset of `limit` images, evenly spaced over the labels sorted by
    (age, gender, race, file), so every age, gender and race keeps its share. None: all."""
    if limit is None or limit >= len(labels):
        return list(labels)
    if limit <= 0:
        return []
    ordered = sorted(labels, key=lambda lb: (lb.age, lb.gender, lb.race, lb.file))
    step = len(ordered) / limit
    return [ordered[int((i + 0.5) * step)] for i in range(limit)]


class BoxOnlyDetector:
    """Another detector's faces without their landmarks: the pipeline then aligns each face from
    its box (`box_landmarks`), as it does for a detector that gives boxes only (Roboflow)."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.name = f"{inner.name} (boxes only)"

    def detect(self, image: RGBImage, min_confidence: float) -> list[Detection]:
        return [replace(d, landmarks=None) for d in self.inner.detect(image, min_confidence)]


def utkface_records(
    analyzer: Analyzer,
    datasets_dir: str | os.PathLike[str],
    limit: int | None = None,
    *,
    pad: float = 0.0,
    progress: bool | None = None,
) -> list[UtkRecord]:
    """Analyse each UTKFace dev image and keep the largest face (by box area).

    datasets_dir: the datasets root (or the `utkface_agegender` folder itself).
    limit: a deterministic stratified subset (`select_even`); None = all images.
    pad: if > 0, a black border of `pad` x the image's long side is added on every side before
        the analysis (a measurement knob for the tight crops; boxes are reported in the original
        image's pixels). For the same landmarks the chips barely change (the library fills the
        outside of the image with black too), but the detector then sees the face smaller and
        places its landmarks differently, which moves the age estimates.
    """
    utk_dir = _sub_dir(Path(datasets_dir), UTKFACE_DIR, "labels.csv")
    labels = select_even(load_utkface_labels(utk_dir), limit)
    records: list[UtkRecord] = []
    for label in tqdm(labels, desc="utkface", unit="img", disable=_no_bar(progress)):
        record = UtkRecord(label.file, label.age, label.gender, label.race)
        path = utk_dir / "images" / label.file
        offset = 0
        start = time.perf_counter()
        if pad > 0:
            rgb = decode_image(path.read_bytes())
            offset = round(pad * max(rgb.shape[:2]))
            padded: RGBImage = np.asarray(
                cv2.copyMakeBorder(rgb, offset, offset, offset, offset, cv2.BORDER_CONSTANT, value=(0, 0, 0)),
                dtype=np.uint8,
            )
            result = analyzer.analyze(padded, image_id=label.file)
        else:
            result = analyzer.analyze(path, image_id=label.file)
        record.ms = (time.perf_counter() - start) * 1000
        if result.error is not None:
            record.error = f"{result.error.code}: {result.error.message}"
        record.faces = len(result.faces)
        if result.faces:
            face = max(result.faces, key=lambda f: _box_area(f.bbox))
            x1, y1, x2, y2 = face.bbox
            record.bbox = (x1 - offset, y1 - offset, x2 - offset, y2 - offset)
            record.detection_confidence = face.confidence
            record.age_years = face.age_years
            record.age_range = face.age
            record.age_confidence = face.age_confidence
            record.gender = face.gender
            record.gender_confidence = face.gender_confidence
        records.append(record)
    return records


def _box_area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def age_in_range(age: float, age_range: str) -> bool:
    """True if `age` is inside the range: "20-30" means 20 <= age < 30, "70+" age >= 70."""
    text = age_range.strip()
    if text.endswith("+"):
        return age >= float(text[:-1])
    low, high = text.split("-")
    return float(low) <= age < float(high)


def age_bin(age: float) -> str:
    """The label of the true-age bin (`AGE_BINS`) holding `age` (whole years)."""
    for label, low, high in AGE_BINS:
        if age >= low and (high is None or age < high + 1):
            return label
    raise ValueError(f"age {age} is in no bin")


def expected_calibration_error(
    confidences: Sequence[float] | NDArray[np.floating],
    correct: Sequence[bool] | NDArray[np.bool_],
    bins: int = 10,
) -> float:
    """ECE with `bins` equal-width confidence bins over [0, 1]: sum over bins of
    (share of samples) x |accuracy - mean confidence|. Bins are [k/bins, (k+1)/bins), the last
    one closed. NaN when there are no samples."""
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    hits = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != hits.shape:
        raise ValueError("confidences and correct differ in length")
    if conf.size == 0:
        return float("nan")
    index = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            ece += count / conf.size * abs(hits[members].mean() - conf[members].mean())
    return float(ece)


@dataclass
class UtkBin:
    images: int = 0
    detected: int = 0
    age_mae: float | None = None
    age_bias: float | None = None  # mean (estimate - truth)
    age_in_range: float | None = None
    gender_accuracy: float | None = None


@dataclass
class UtkSummary:
    images: int
    detected: int
    detection_rate: float
    multi_face_images: int  # images where more than one face was found
    errors: int
    age_mae: float
    age_bias: float
    age_in_range: float  # share of faces whose true age is inside the reported range
    mean_age_confidence: float
    age_ece: float
    gender_accuracy: float
    gender_accuracy_10plus: float
    mean_gender_confidence: float
    gender_ece: float
    mean_ms: float
    settings: dict[str, Any] = field(default_factory=dict)
    per_bin: dict[str, UtkBin] = field(default_factory=dict)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.fmean(items) if items else float("nan")


def _estimate_figures(found: Sequence[UtkRecord]) -> tuple[float, float, float, float]:
    """Age MAE, age bias, share of true ages in the reported range and gender accuracy over the
    faces `found` (NaN each when there are none)."""
    errors = [r.age_years - r.true_age for r in found if r.age_years is not None]
    return (
        _mean(abs(e) for e in errors),
        _mean(errors),
        _mean(float(bool(r.age_correct)) for r in found),
        _mean(float(bool(r.gender_correct)) for r in found),
    )


def summarize_utkface(records: Sequence[UtkRecord], settings: Mapping[str, Any] | None = None) -> UtkSummary:
    """The DESIGN.md section 8 figures from per-image records."""
    found = [r for r in records if r.detected]
    per_bin: dict[str, UtkBin] = {}
    for label, _, _ in AGE_BINS:
        members = [r for r in records if age_bin(r.true_age) == label]
        hits = [r for r in members if r.detected]
        mae, bias, in_range, gender = _estimate_figures(hits) if hits else (None, None, None, None)
        per_bin[label] = UtkBin(
            images=len(members),
            detected=len(hits),
            age_mae=mae,
            age_bias=bias,
            age_in_range=in_range,
            gender_accuracy=gender,
        )
    age_mae, age_bias, age_in_range, gender_accuracy = _estimate_figures(found)
    return UtkSummary(
        images=len(records),
        detected=len(found),
        detection_rate=len(found) / len(records) if records else float("nan"),
        multi_face_images=sum(1 for r in records if r.faces > 1),
        errors=sum(1 for r in records if r.error is not None),
        age_mae=age_mae,
        age_bias=age_bias,
        age_in_range=age_in_range,
        mean_age_confidence=_mean(r.age_confidence or 0.0 for r in found),
        age_ece=expected_calibration_error(
            [r.age_confidence or 0.0 for r in found], [bool(r.age_correct) for r in found]
        ),
        gender_accuracy=gender_accuracy,
        gender_accuracy_10plus=_mean(float(bool(r.gender_correct)) for r in found if r.true_age >= 10),
        mean_gender_confidence=_mean(r.gender_confidence or 0.0 for r in found),
        gender_ece=expected_calibration_error(
            [r.gender_confidence or 0.0 for r in found], [bool(r.gender_correct) for r in found]
        ),
        mean_ms=_mean(r.ms for r in records),
        settings=dict(settings or {}),
        per_bin=per_bin,
    )


def _pct(value: float | None) -> str:
    return "     -" if value is None else f"{100 * value:5.1f}%"


def _num(value: float | None, spec: str = "5.2f") -> str:
    return "    -" if value is None else format(value, spec)


def format_utkface(summary: UtkSummary) -> str:
    s = summary
    shown = {**s.settings}
    if "detect_size" in shown and shown["detect_size"] is None:
        shown["detect_size"] = "native"
    settings = " ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
    lines = [
        f"UTKFace dev  {settings}",
        f"  images {s.images}, face found in {s.detected} ({_pct(s.detection_rate).strip()}), "
        f"more than one face in {s.multi_face_images}, errors {s.errors}, "
        f"{s.mean_ms:.1f} ms/image",
        f"  age: MAE {s.age_mae:.2f} y (bias {s.age_bias:+.2f} y), true age in reported range "
        f"{_pct(s.age_in_range).strip()}, mean age_confidence {s.mean_age_confidence:.3f}, "
        f"ECE {s.age_ece:.3f}",
        f"  gender: accuracy {_pct(s.gender_accuracy).strip()} "
        f"(ages >= 10: {_pct(s.gender_accuracy_10plus).strip()}), "
        f"mean gender_confidence {s.mean_gender_confidence:.3f}, ECE {s.gender_ece:.3f}",
        "  true age  images  found    MAE    bias  in range  gender",
    ]
    for label, b in s.per_bin.items():
        lines.append(
            f"  {label:>8}  {b.images:6d}  {b.detected:5d}  {_num(b.age_mae)}  "
            f"{_num(b.age_bias, '+6.2f')}  {_pct(b.age_in_range):>8}  {_pct(b.gender_accuracy)}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _analyzer(detect_size: int | None, min_confidence: float, engine: Mapping[str, Any]) -> Analyzer:
    return Analyzer(AnalyzerConfig(detect_size=detect_size, min_confidence=min_confidence, **engine))


def _engine(args: argparse.Namespace) -> dict[str, Any]:
    """The AnalyzerConfig fields given on the command line (threads, runtime, precision)."""
    names = ("threads", "runtime", "precision")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _json_safe(value: Any) -> Any:
    """NaN (a figure with no samples) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _no_bar(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None hides the bar when stderr is not a terminal."""
    return None if progress is None else not progress


def _detect_size(text: str) -> int | None:
    if text.lower() == "native":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number of pixels or 'native'") from None


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before or after the subcommand (after it, only explicit values count)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--datasets",
        metavar="DIR",
        default=default(None),
        help=f"datasets folder (default: ${DATASETS_ENV}, else {DEFAULT_DATASETS})",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=default(None),
        help="also write the figures as JSON to PATH",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=default(None),
        help="onnxruntime threads per model (default: the library's, all cores)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default(None),
        help="inference runtime, as the CLI's --runtime (default: the library's, onnxruntime)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default(None),
        help="as the CLI's --precision (default: the library's, auto)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accuracy.py",
        description="Accuracy of face_analysis on the dev sets: WIDER FACE detection AP "
        "(official protocol) and UTKFace age/gender. Without a subcommand both run with "
        "their default settings.",
    )
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="mode", metavar="{wider,utkface}")

    wider = sub.add_parser(
        "wider",
        help="WIDER FACE dev subset: AP easy/medium/hard (official evaluation.py)",
        description="Detection AP on the WIDER FACE dev subset by the official protocol: "
        "IoU >= 0.5 (pixel-inclusive boxes), faces outside a setting's list ignored, scores "
        "min-max normalised over the set, 1000 thresholds, VOC all-point AP.",
    )
    _add_common(wider, suppress=True)
    wider.add_argument(
        "--detect-size",
        type=_detect_size,
        nargs="+",
        default=[WIDER_DETECT_SIZE],
        metavar="PX",
        help="long side the detector sees, in pixels, or 'native'; several values run one "
        f"after the other (default: {WIDER_DETECT_SIZE})",
    )
    wider.add_argument(
        "--min-confidence",
        type=float,
        default=WIDER_MIN_CONFIDENCE,
        help="detections below this score are dropped; keep it low so the whole "
        f"precision-recall curve exists (default: {WIDER_MIN_CONFIDENCE})",
    )

    wider.add_argument(
        "--coords",
        choices=WIDER_COORDS,
        default="original",
        help="where boxes are compared: 'original' (default): the official boxes in the "
        "original 1024 px wide images, detections scaled up by 1/scale, as the eval kit "
        "scores them; 'delivered': boxes.csv x, y, w, h in the delivered ~0.41x images (the "
        "+1 pixel of the protocol then counts ~2.5x more; hard AP comes out ~0.02 higher)",
    )

    utk = sub.add_parser(
        "utkface",
        help="UTKFace dev set: detection rate, age MAE, gender accuracy, calibration",
        description="Age and gender on the UTKFace dev set (DESIGN.md section 8): the largest "
        "detected face per image, detection rate, age MAE, gender accuracy (all and ages >= 10), "
        "true age in the reported range, ECE (10 bins) of age_confidence and gender_confidence, "
        "figures per age bin.",
    )
    _add_common(utk, suppress=True)
    utk.add_argument(
        "--detect-size",
        type=_detect_size,
        default=UTK_DETECT_SIZE,
        metavar="PX",
        help=f"long side the detector sees, in pixels, or 'native' (default: {UTK_DETECT_SIZE})",
    )
    utk.add_argument(
        "--min-confidence",
        type=float,
        default=UTK_MIN_CONFIDENCE,
        help=f"faces below this detection score are dropped (default: {UTK_MIN_CONFIDENCE})",
    )
    utk.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only N images, evenly spread over age, gender and race (deterministic)",
    )
    utk.add_argument(
        "--pad",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="add a black border of FRACTION x the image side on every side before the "
        "analysis (to measure detection on the tight crops; it also changes where the "
        "detector puts the landmarks, hence the ages; default: 0, none)",
    )
    utk.add_argument(
        "--records",
        metavar="PATH",
        type=Path,
        default=None,
        help="also write one JSON line per image (labels + largest face's estimates) to PATH",
    )
    utk.add_argument(
        "--no-landmarks",
        action="store_true",
        help="drop the detector's landmarks and align each face from its box (box_landmarks), "
        "as for a detector that gives boxes only (Roboflow)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    datasets = resolve_datasets_dir(args.datasets)
    if not datasets.is_dir():
        print(f"accuracy: no datasets folder at {datasets}; nothing to measure.")
        return 0
    modes = [args.mode] if args.mode else ["wider", "utkface"]
    output: dict[str, Any] = {"datasets": str(datasets)}

    if "wider" in modes:
        wider_dir = _sub_dir(datasets, WIDER_DIR, "boxes.csv")
        if not (wider_dir / "boxes.csv").is_file():
            print(f"accuracy: no WIDER FACE subset at {wider_dir}; skipping wider.")
        else:
            sizes = args.detect_size if args.mode else [WIDER_DETECT_SIZE]
            min_conf = args.min_confidence if args.mode else WIDER_MIN_CONFIDENCE
            coords = args.coords if args.mode else "original"
            reports = []
            for size in sizes:
                report = run_wider(wider_dir, size, min_conf, _engine(args), args.progress, coords=coords)
                print(format_wider(report), flush=True)
                reports.append(asdict(report))
            output["wider"] = reports

    if "utkface" in modes:
        utk_dir = _sub_dir(datasets, UTKFACE_DIR, "labels.csv")
        if not (utk_dir / "labels.csv").is_file():
            print(f"accuracy: no UTKFace set at {utk_dir}; skipping utkface.")
        else:
            explicit = args.mode == "utkface"
            settings: dict[str, Any] = {
                "detect_size": args.detect_size if explicit else UTK_DETECT_SIZE,
                "min_confidence": args.min_confidence if explicit else UTK_MIN_CONFIDENCE,
                "limit": args.limit if explicit else None,
                "pad": args.pad if explicit else 0.0,
                "aligned_from": "box" if explicit and args.no_landmarks else "landmarks",
            }
            analyzer = _analyzer(settings["detect_size"], settings["min_confidence"], _engine(args))
            if settings["aligned_from"] == "box":
                analyzer.detection.detector = BoxOnlyDetector(analyzer.detector)
            records = utkface_records(
                analyzer, utk_dir, settings["limit"], pad=settings["pad"], progress=args.progress
            )
            summary = summarize_utkface(records, settings)
            print(format_utkface(summary), flush=True)
            output["utkface"] = asdict(summary)
            if explicit and args.records is not None:
                args.records.parent.mkdir(parents=True, exist_ok=True)
                lines = (json.dumps(_json_safe(r.to_dict())) for r in records)
                args.records.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_json_safe(output), indent=2, allow_nan=False)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
