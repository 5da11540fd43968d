"""Face Analysis System: every face in an image, with 5 landmarks, age and gender.

Usage::

    from face_analysis import Analyzer
    result = Analyzer().analyze("photo.jpg")
    for face in result.faces:
        print(face.bbox, face.age, face.gender, face.gender_confidence)

The names below are loaded on first use: `import face_analysis` (and the command line's
--help) stays fast, and a service imports only what it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names

if TYPE_CHECKING:
    from .errors import AnalysisError, ErrorCode, ModelError
    from .pipeline import Analyzer
    from .results import Face, ImageResult, ResultError
    from .settings import AnalyzerConfig, DecodeLimits

__all__ = [
    "AnalysisError",
    "Analyzer",
    "AnalyzerConfig",
    "DecodeLimits",
    "ErrorCode",
    "Face",
    "ImageResult",
    "ModelError",
    "ResultError",
]
__version__ = "0.1.0"
__getattr__ = lazy_names(
    __name__,
    {
        "AnalysisError": ".errors",
        "Analyzer": ".pipeline",
        "AnalyzerConfig": ".settings",
        "DecodeLimits": ".settings",
        "ErrorCode": ".errors",
        "Face": ".results",
        "ImageResult": ".results",
        "ModelError": ".errors",
        "ResultError": ".results",
    },
)
