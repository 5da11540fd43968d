"""Age and gender from aligned face chips.

Names are loaded on first use, so that a user of the types alone (e.g. a service that only
stores results) does not load the model runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ._types import AgeGender
    from .age_gender import AgeGenderEstimator, Calibration
    from .alignment import CHIP_TEMPLATE, extract_chip, similarity_transform

__all__ = [
    "CHIP_TEMPLATE",
    "AgeGender",
    "AgeGenderEstimator",
    "Calibration",
    "extract_chip",
    "similarity_transform",
]
__getattr__ = lazy_names(
    __name__,
    {
        "AgeGender": "._types",
        "AgeGenderEstimator": ".age_gender",
        "Calibration": ".age_gender",
        "CHIP_TEMPLATE": ".alignment",
        "extract_chip": ".alignment",
        "similarity_transform": ".alignment",
    },
)
