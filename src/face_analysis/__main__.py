"""`python -m face_analysis ...` is `face-analysis ...`."""

from .cli import main

main()
