"""Fit the chip template and the confidence calibration on the UTKFace dev set.

Usage::

    python benchmarks/fit.py [--datasets ../shared/datasets] [--cache /tmp/utk-detections.npz]

1. Detect every face with the default settings; keep the largest per image.
2. Template: the mean of CenterFace's 5 points, in chip units, over these dlib-aligned chips.
   (An earlier experiment, not part of this script, searched the template's scale and vertical
   position and found nothing better.)
3. Calibration: a logistic map of logit(probability mass in the reported decade) for
   `age_confidence`, a temperature on the gender log-probabilities for `gender_confidence`.
   Fitted on one half and scored (ECE) on the other, both ways; the final fit uses all faces.
Prints the constants for `attributes/alignment.py` and `attributes/age_gender.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from face_analysis import Analyzer, AnalyzerConfig
from face_analysis.attributes.age_gender import _AGE_WEIGHTS
from face_analysis.imaging import decode_image

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import DEFAULT_DATASETS, UTKFACE_DIR, expected_calibration_error, load_utkface_labels

Array = NDArray[np.float64]


def detect_all(analyzer: Analyzer, root: Path, cache: Path | None) -> dict[str, NDArray]:  # type: ignore[type-arg]
    if cache and cache.exists():
        return dict(np.load(cache))
    labels = load_utkface_labels(root)
    landmarks = np.full((len(labels), 5, 2), np.nan, np.float32)
    for i, label in enumerate(labels):
        faces = analyzer.detect(decode_image((root / "images" / label.file).read_bytes()))
        if faces:
            largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            landmarks[i] = largest.landmarks
    data = {
        "files": np.array([label.file for label in labels]),
        "age": np.array([label.age for label in labels]),
        "male": np.array([label.gender == "Male" for label in labels]),
        "landmarks": landmarks,
    }
    if cache:
        np.savez(cache, **data)  # type: ignore[arg-type]  # numpy's stub takes a kwarg for allow_pickle
    return data


def logit(p: Array, eps: float, top: float = 1.0) -> Array:
    """log(p / (1 - p)), with p clipped to [eps, top] and 1 - p to [eps, 1]."""
    return np.log(np.clip(p, eps, top) / np.clip(1 - p, eps, 1))


def age_logit(mass: Array) -> Array:
    return logit(mass, 1e-6, 1 - 1e-6)


def gender_logit(p_male: Array) -> Array:
    return logit(p_male, 1e-7)


def fit_age_calibration(mass: Array, correct: Array) -> tuple[float, float]:
    """Slope and bias of the logistic map with the lowest negative log-likelihood (grid search)."""
    x = age_logit(mass)
    biases = np.arange(-3.0, 3.0, 0.01)
    best = (np.inf, 1.0, 0.0)
    for slope in np.arange(0.05, 2.0, 0.01):
        z = slope * x[None, :] + biases[:, None]
        # -log-likelihood of a logistic model, computed stably with logaddexp
        nll = (np.logaddexp(0, z) - correct[None, :] * z).mean(axis=1)
        i = int(np.argmin(nll))
        if nll[i] < best[0]:
            best = (float(nll[i]), float(slope), float(biases[i]))
    return best[1], best[2]


def age_confidence(mass: Array, slope: float, bias: float) -> Array:
    x = age_logit(mass)
    return 1 / (1 + np.exp(-(slope * x + bias)))


def gender_confidence(p_male: Array, temperature: float) -> Array:
    p = 1 / (1 + np.exp(-gender_logit(p_male) / temperature))
    return np.maximum(p, 1 - p)


def fit_temperature(p_male: Array, male: Array) -> float:
    """The temperature with the lowest negative log-likelihood, on a fine grid."""
    raw = gender_logit(p_male)

    def nll(t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-raw / t)), 1e-9, 1 - 1e-9)
        return float(-np.mean(np.where(male, np.log(p), np.log(1 - p))))

    grid = np.arange(0.5, 6.0, 0.05)
    return float(grid[np.argmin([nll(t) for t in grid])])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS, help="folder of the dev sets")
    parser.add_argument("--cache", type=Path, help="npz file caching the detections between runs")
    args = parser.parse_args()
    root = args.datasets / UTKFACE_DIR
    if not root.is_dir():
        print(f"no UTKFace dev set at {root}: nothing to fit")
        return
    analyzer = Analyzer(AnalyzerConfig(precision="fp32"))
    data = detect_all(analyzer, root, args.cache)
    found = np.isfinite(data["landmarks"][:, 0, 0])
    files, ages, male = data["files"][found], data["age"][found], data["male"][found]
    landmarks = data["landmarks"][found]
    template = landmarks.mean(axis=0) / 200.0  # the chips are 200 x 200
    print("CHIP_TEMPLATE =", [[round(float(v), 4) for v in point] for point in template])

    age_probs, gender_probs = [], []
    for file, points in zip(files, landmarks, strict=True):
        image = decode_image((root / "images" / str(file)).read_bytes())
        a, g = analyzer.estimator.raw_probabilities(image, [points])
        age_probs.append(a[0])
        gender_probs.append(g[0])
    age_p, p_male = np.array(age_probs), np.array(gender_probs)[:, 1]
    age_years = age_p @ _AGE_WEIGHTS
    low = (age_years // 10 * 10).astype(int)
    mass = np.array([p[lo : lo + 10].sum() for p, lo in zip(age_p, low, strict=True)])
    in_range = ((ages >= low) & (ages < low + 10)).astype(float)
    male_pred = p_male > 0.5
    print(
        f"faces {found.sum()}/{len(found)}  age MAE {np.abs(age_years - ages).mean():.2f} y  "
        f"gender acc (age>=10) {(male_pred == male)[ages >= 10].mean():.3f}"
    )
    print(
        f"raw: ECE age {expected_calibration_error(mass, in_range):.3f}  "
        f"gender {expected_calibration_error(np.maximum(p_male, 1 - p_male), male_pred == male):.3f}"
    )

    halves = np.arange(len(ages)) % 2 == 0
    for fit_on, score_on in ((halves, ~halves), (~halves, halves)):
        slope, bias = fit_age_calibration(mass[fit_on], in_range[fit_on])
        temperature = fit_temperature(p_male[fit_on], male[fit_on])
        ece_age = expected_calibration_error(age_confidence(mass[score_on], slope, bias), in_range[score_on])
        ece_gender = expected_calibration_error(
            gender_confidence(p_male[score_on], temperature), (male_pred == male)[score_on]
        )
        print(f"held-out half: ECE age {ece_age:.3f}  gender {ece_gender:.3f}")
    slope, bias = fit_age_calibration(mass, in_range)
    temperature = fit_temperature(p_male, male)
    print(f"Calibration(age_slope={slope:.4f}, age_bias={bias:.4f}, gender_temperature={temperature:.2f})")


if __name__ == "__main__":
    main()
