"""CenterFace (MIT) via onnxruntime or OpenVINO: boxes and 5 landmarks at any input size.

Usage::

    detector = CenterFace(paths.centerface, detect_size=640)
    faces = detector.detect(rgb, min_confidence=0.5)
    crowd = CenterFace(paths.centerface, passes=ACCURATE_PASSES)   # scale-aware multi-scale
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray

from ..imaging import RGBImage
from ..runtime import Runtime, create_runner, load_model
from ._types import Detection
from .nms import Candidates, nms, overlaps, weighted_nms

__all__ = [
    "ACCURATE_PASSES",
    "CenterFace",
    "ScalePass",
    "input_blob",
    "nms",
    "weighted_nms",
    "with_dynamic_size",
]

_STRIDE = 4
_ALIGN = 32  # the network downsamples by 32: input sides must be multiples of it
_NMS_IOU = 0.3
_MULTI_NMS_IOU = 0.4
_MAX_LANDMARK_FACE = 256.0  # face height, in network-input pixels, above which landmarks drift
_REFINED_FACE = 160.0
_MATCH_IOU = 0.5  # a face and its re-read in the smaller look


@dataclass(frozen=True, slots=True)
class ScalePass:
    """One look at the image: long side at `size` px; keep the faces whose size (sqrt of box
    area) in the network's input pixels is in [min_face, max_face)."""

    size: int
    min_face: float = 0.0
    max_face: float = float("inf")


# The accurate (crowd) preset, tuned on the WIDER dev subset: 640 px for faces the network sees
# at >= 16 px, plus 2048 px for the faces it sees there below 85 px (small faces), merged by
# weighted NMS (IoU 0.4).
ACCURATE_PASSES: tuple[ScalePass, ...] = (ScalePass(640, min_face=16.0), ScalePass(2048, max_face=85.0))


def with_dynamic_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """The CenterFace graph (changed in place) with symbolic batch, height and width.

    The model declares a fixed 10x3x32x32 input. It also lists its weights as graph inputs,
    which stops onnxruntime from folding them (conv + batch-norm fusion): they are dropped from
    the inputs, a ~4x faster detector.
    """
    graph = model.graph
    weights = {initializer.name for initializer in graph.initializer}
    real_inputs = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(real_inputs)
    for value in [graph.input[0], *graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, ("batch", None, "height", "width"), strict=True):
            if name is not None:
                dim.dim_param = name
    return model


class CenterFace:
    """CenterFace detector; the image's long side is resized to `detect_size` first.

    `detect_size` None runs at the native size. Smaller is faster; larger finds smaller faces.
    `passes` (e.g. ACCURATE_PASSES) replaces `detect_size` by several looks at different sizes,
    each keeping the face sizes it is good at, merged by weighted NMS. `model_path` may be the
    fp32 or the int8 model; `runtime` runs it with onnxruntime or OpenVINO (`bf16`: let OpenVINO
    compute an fp32 model in bf16 where the CPU supports it). `network` runs the model alone on
    an `input_blob`.
    """

    name = "centerface"

    def __init__(
        self,
        model_path: Path,
        detect_size: int | None = 640,
        threads: int = 1,
        runtime: Runtime = "onnxruntime",
        passes: Sequence[ScalePass] = (),
        bf16: bool = True,
    ) -> None:
        self.detect_size = detect_size
        self.passes = tuple(passes)
        self.network = create_runner(
            with_dynamic_size(load_model(model_path)).SerializeToString(),
            threads,
            runtime,
            bf16=bf16,
            static_shapes=True,  # photos come in a few shapes: a batch repeats them
        )

    def detect(self, image: RGBImage, min_confidence: float) -> list[Detection]:
        if self.passes:
            return self._detect_multi(image, min_confidence)
        height, width = image.shape[:2]
        scale = 1.0 if self.detect_size is None else self.detect_size / max(height, width)
        faces = self._detect_at(image, scale, min_confidence)
        if not faces and scale > 1:
            # Upscaling finds small faces but can push a face that fills a small image past the
            # largest size the network knows; such an image gets a second, native-size look.
            faces = self._detect_at(image, 1.0, min_confidence)
        return self._refine_large_faces(image, scale, faces, min_confidence)

    def _refine_large_faces(
        self, image: RGBImage, scale: float, faces: list[Detection], min_confidence: float
    ) -> list[Detection]:
        """Landmarks of faces the network saw very large, re-read from a smaller look.

        CenterFace draws the landmarks of a face it sees above ~256 px closer together than
        of the same face at a usual size, and the chip template is fitted at usual sizes: such
        a close-up moves the age estimate by years. One extra look, scaled so the largest face
        is ~160 px, gives those faces their landmarks; boxes and scores stay.
        """
        largest = max((f.box[3] - f.box[1] for f in faces), default=0.0) * scale
        if largest <= _MAX_LANDMARK_FACE:
            return faces
        smaller = self._detect_at(image, scale * _REFINED_FACE / largest, min_confidence)
        refined = []
        for face in faces:
            match = _best_match(face, smaller)
            if (face.box[3] - face.box[1]) * scale > _MAX_LANDMARK_FACE and match is not None:
                face = Detection(box=face.box, score=face.score, landmarks=match.landmarks)
            refined.append(face)
        return refined

    def _detect_multi(self, image: RGBImage, min_confidence: float) -> list[Detection]:
        height, width = image.shape[:2]
        found: list[Candidates] = []
        for look in self.passes:
            scale = look.size / max(height, width)
            boxes, scores, landmarks = self._candidates(image, scale, min_confidence)
            face = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) * scale
            keep = (face >= look.min_face) & (face < look.max_face)
            found.append((boxes[keep], scores[keep], landmarks[keep]))
        boxes = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        landmarks = np.concatenate([f[2] for f in found])
        boxes, scores, landmarks = weighted_nms(boxes, scores, landmarks, _MULTI_NMS_IOU)
        return _detections(boxes, scores, landmarks, width, height)

    def _candidates(self, image: RGBImage, scale: float, min_confidence: float) -> Candidates:
        """Every heatmap cell above `min_confidence` (no NMS), in the image's pixels."""
        heatmap, log_size, offset, points = self.network(input_blob(image, scale))
        boxes, scores, landmarks = _decode(heatmap[0, 0], log_size[0], offset[0], points[0], min_confidence)
        return boxes / np.float32(scale), scores, landmarks / np.float32(scale)

    def _detect_at(self, image: RGBImage, scale: float, min_confidence: float) -> list[Detection]:
        boxes, scores, landmarks = self._candidates(image, scale, min_confidence)
        keep = nms(boxes, scores, _NMS_IOU)
        height, width = image.shape[:2]
        return _detections(boxes[keep], scores[keep], landmarks[keep], width, height)


def input_blob(image: RGBImage, scale: float) -> NDArray[np.float32]:
    """The network's input for `image` resized by `scale`: 1 x 3 x H x W, padded to multiples of 32."""
    height, width = image.shape[:2]
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = image if scale == 1.0 else cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    pad_h, pad_w = -new_h % _ALIGN, -new_w % _ALIGN
    blob = np.zeros((1, 3, new_h + pad_h, new_w + pad_w), dtype=np.float32)
    blob[0, :, :new_h, :new_w] = resized.transpose(2, 0, 1)
    return blob


def _best_match(face: Detection, candidates: Sequence[Detection]) -> Detection | None:
    """The candidate overlapping `face` most, if by IoU >= 0.5."""
    if not candidates:
        return None
    boxes = np.array([face.box, *(other.box for other in candidates)], dtype=np.float32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ious = overlaps(boxes, areas, np.intp(0), np.arange(1, len(boxes)))
    best = int(np.argmax(ious))
    return candidates[best] if ious[best] >= _MATCH_IOU else None


def _detections(
    boxes: NDArray[np.float32],
    scores: NDArray[np.float32],
    landmarks: NDArray[np.float32],
    width: int,
    height: int,
) -> list[Detection]:
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return [
        Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), score=float(s), landmarks=lm)
        for b, s, lm in zip(boxes, scores, landmarks, strict=True)
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
