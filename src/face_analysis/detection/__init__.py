"""Face detectors: an RGB image in, boxes with confidences (and 5 landmarks, if given) out."""

from ._types import Detection, FaceDetector
from .centerface import ACCURATE_PASSES, CenterFace, ScalePass
from .roboflow import RoboflowDetector, RoboflowSettings

__all__ = [
    "ACCURATE_PASSES",
    "CenterFace",
    "Detection",
    "FaceDetector",
    "RoboflowDetector",
    "RoboflowSettings",
    "ScalePass",
]
