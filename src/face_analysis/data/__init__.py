"""Files the package ships: the public-domain photo the int8 models are calibrated on.

`astronaut.jpg` is NASA's portrait of Eileen Collins (public domain, as shipped with
scikit-image; 512 x 512, one face). The tests make their images from it too.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CALIBRATION_PHOTO"]

CALIBRATION_PHOTO = Path(__file__).with_name("astronaut.jpg")
