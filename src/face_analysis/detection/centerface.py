"""CenterFace (MIT) via onnxruntime: boxes and 5 landmarks at any input size.

Usage::

    detector = CenterFace(paths.centerface, detect_size=640)
    faces = detector.detect(rgb, min_confidence=0.5)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray

from ..imaging import RGBImage
from ..models import create_session
from ._types import Detection

__all__ = ["CenterFace", "nms"]

_STRIDE = 4
_ALIGN = 32  # the network downsamples by 32: input sides must be multiples of it
_NMS_IOU = 0.3


def _with_dynamic_size(model_path: Path) -> bytes:
    """The model declares a fixed 10x3x32x32 input; make batch, height and width symbolic."""
    model = onnx.load(str(model_path))
    for value in [model.graph.input[0], *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, ("batch", None, "height", "width"), strict=True):
            if name is not None:
                dim.dim_param = name
    serialized: bytes = model.SerializeToString()
    return serialized


class CenterFace:
    """CenterFace detector; the image's long side is resized to `detect_size` first.

    `detect_size` None runs at the native size. Smaller is faster; larger finds smaller faces.
    """

    name = "centerface"

    def __init__(self, model_path: Path, detect_size: int | None = 640, threads: int = 1) -> None:
        self.detect_size = detect_size
        self._session = create_session(_with_dynamic_size(model_path), threads)
        self._input = self._session.get_inputs()[0].name

    def detect(self, image: RGBImage, min_confidence: float) -> list[Detection]:
        height, width = image.shape[:2]
        scale = 1.0 if self.detect_size is None else self.detect_size / max(height, width)
        faces = self._detect_at(image, scale, min_confidence)
        if not faces and scale > 1:
            # Upscaling finds small faces but can push a face that fills a small image past the
            # largest size the network knows; such an image gets a second, native-size look.
            faces = self._detect_at(image, 1.0, min_confidence)
        return faces

    def _detect_at(self, image: RGBImage, scale: float, min_confidence: float) -> list[Detection]:
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        pad_h, pad_w = -new_h % _ALIGN, -new_w % _ALIGN
        blob = np.zeros((1, 3, new_h + pad_h, new_w + pad_w), dtype=np.float32)
        blob[0, :, :new_h, :new_w] = resized.transpose(2, 0, 1)
        heatmap, log_size, offset, points = self._session.run(None, {self._input: blob})
        boxes, scores, landmarks = _decode(heatmap[0, 0], log_size[0], offset[0], points[0], min_confidence)
        keep = nms(boxes, scores, _NMS_IOU)
        # Back to original pixels; x and y scale alike (we kept the aspect ratio).
        boxes = boxes[keep] / np.float32(scale)
        landmarks = landmarks[keep] / np.float32(scale)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        return [
            Detection(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                landmarks=lm,
            )
            for b, s, lm in zip(boxes, scores[keep], landmarks, strict=True)
        ]


def _decode(
    heatmap: NDArray[np.float32],
    log_size: NDArray[np.float32],
    offset: NDArray[np.float32],
    points: NDArray[np.float32],
    threshold: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Heatmap peaks to boxes (x1, y1, x2, y2), scores and 5 x 2 landmarks, in input pixels."""
    ys, xs = np.nonzero(heatmap > threshold)
    scores = heatmap[ys, xs]
    box_h = np.exp(log_size[0, ys, xs]) * _STRIDE
    box_w = np.exp(log_size[1, ys, xs]) * _STRIDE
    x1 = (xs + offset[1, ys, xs] + 0.5) * _STRIDE - box_w / 2
    y1 = (ys + offset[0, ys, xs] + 0.5) * _STRIDE - box_h / 2
    boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)
    # Landmark channels are (y, x) pairs relative to the box's top-left, in box units.
    pts = points[:, ys, xs].T.reshape(-1, 5, 2)
    landmarks = np.stack(
        [pts[:, :, 1] * box_w[:, None] + x1[:, None], pts[:, :, 0] * box_h[:, None] + y1[:, None]],
        axis=2,
    ).astype(np.float32)
    return boxes, scores.astype(np.float32), landmarks


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> NDArray[np.intp]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        ix1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        iy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        ix2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        iy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = (ix2 - ix1).clip(0) * (iy2 - iy1).clip(0)
        overlap = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.intp)
