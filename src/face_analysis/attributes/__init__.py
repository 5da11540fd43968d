"""Age and gender from aligned face chips."""

from .age_gender import AgeGender, AgeGenderEstimator, Calibration
from .alignment import CHIP_TEMPLATE, extract_chip, similarity_transform

__all__ = [
    "CHIP_TEMPLATE",
    "AgeGender",
    "AgeGenderEstimator",
    "Calibration",
    "extract_chip",
    "similarity_transform",
]
