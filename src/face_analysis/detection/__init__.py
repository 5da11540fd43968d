"""Face detectors: an RGB image in, boxes with confidences and 5 landmarks out."""

from ._types import Detection, FaceDetector
from .centerface import CenterFace

__all__ = ["CenterFace", "Detection", "FaceDetector"]
