"""Face Analysis System: every face in an image, with 5 landmarks, age and gender.

Usage::

    from face_analysis import Analyzer
    result = Analyzer().analyze("photo.jpg")
    for face in result.faces:
        print(face.bbox, face.age, face.gender, face.gender_confidence)
"""

from .errors import AnalysisError, ErrorCode, ModelError
from .imaging import DecodeLimits
from .pipeline import Analyzer, AnalyzerConfig
from .results import Face, ImageResult, ResultError

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
