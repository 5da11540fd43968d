"""Face detectors: an RGB image in, boxes with confidences (and 5 landmarks, if given) out.

Names are loaded on first use, so that a user of the types alone does not load the model runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ..settings import RoboflowSettings
    from ._types import Detection, FaceDetector
    from .centerface import ACCURATE_PASSES, CenterFace, ScalePass
    from .roboflow import RoboflowDetector

__all__ = [
    "ACCURATE_PASSES",
    "CenterFace",
    "Detection",
    "FaceDetector",
    "RoboflowDetector",
    "RoboflowSettings",
    "ScalePass",
]
__getattr__ = lazy_names(
    __name__,
    {
        "ACCURATE_PASSES": ".centerface",
        "CenterFace": ".centerface",
        "Detection": "._types",
        "FaceDetector": "._types",
        "RoboflowDetector": ".roboflow",
        "RoboflowSettings": "..settings",
        "ScalePass": ".centerface",
    },
)
