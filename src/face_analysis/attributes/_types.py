from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AgeGender"]


@dataclass(frozen=True, slots=True)
class AgeGender:
    """One face's estimates."""

    age_years: float
    age_range: str
    age_confidence: float
    gender: str
    gender_confidence: float
