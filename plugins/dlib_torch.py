"""Encoder ``dlib-torch``: dlib's ResNet ported to torch, batched, on CPU or GPU, no dlib needed.

Each face is aligned to dlib's 150x150 chip in one or more ways and every chip
is also seen mirrored; the descriptors of all views are averaged. The default
views, YuNet's 5 landmarks and dlib's 5-point predictor (run in numpy) on the
face box, each with its mirror image, were chosen on LFW View 1: see
docs/benchmarks.md.

With ``variant`` set (a file written by ``gate train``, see docs/metric-learning.md), the
averaged descriptor goes through the variant's projection head (and the network through its
fine-tuned last blocks, if any): the encoder then has the variant's own ``space``, ``dim`` and
``threshold``, so its templates never mix with the base encoder's or another variant's.

The encoder is what ``gate train`` adapts: it has every member of
:class:`gate.recognition.metric.trainable.TrainableEncoder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from gate import hookimpl
from gate.components import Encoder, Face, StrictOptions

Alignment = Literal["landmarks", "sp5"]


class DlibTorchOptions(StrictOptions):
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="fp16/bf16 are for GPUs; on a CPU they are slower or less exact."
    )
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads.")
    alignments: list[Alignment] = Field(
        default_factory=lambda: ["landmarks", "sp5"],
        min_length=1,
        description="Views averaged: the detector's landmarks, dlib's 5-point predictor.",
    )
    flip: bool = Field(True, description="Also encode each view mirrored and average.")
    batch_size: int = Field(128, ge=1, le=4096, description="Chips per forward pass.")
    variant: str | None = Field(
        None,
        min_length=1,
        description="Encoder variant from gate train: a name (data dir's encoders/NAME.pt) "
        "or a path to a .pt file. Changes the embedding space: run gate people reencode.",
    )


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class DlibTorchEncoder(Encoder):
    """The default encoder: same embedding space and threshold as dlib's own."""

    name = "dlib-torch"
    version = "resnet_v1"
    description = "dlib ResNet in torch (CC0 weights): batched, CPU/GPU, flip and alignment views"
    space = "dlib-resnet-v1"
    dim = 128
    #: chosen on LFW View 1's training pairs: the distance that keeps false accepts at or
    #: below 0.3% there (dlib's own 0.6 sits at the balanced error, about 1%)
    threshold = 0.55
    Options = DlibTorchOptions
    #: training starts from the base network at full precision (TrainableEncoder)
    training_options: ClassVar[Mapping[str, Any]] = {"variant": None, "precision": "fp32"}

    def __init__(self, options: DlibTorchOptions | None = None):
        super().__init__(options)
        import torch

        from gate.recognition.nn.dlib_resnet import load_dlib_resnet

        o = self.options
        if o.threads:
            torch.set_num_threads(o.threads)
        self.device = pick_device(o.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            o.precision
        ]
        self.model = load_dlib_resnet(device=self.device, dtype=self.dtype)
        views = "+".join(o.alignments) + ("+flip" if o.flip else "")
        self.version = f"{type(self).version}/{views}/{o.precision}"
        self._predictor = None
        self.head = None
        self.variant = None
        if o.variant is not None:
            from gate.recognition.metric.head import apply_variant, load_variant

            self.variant = load_variant(o.variant)
            self.head = apply_variant(self.model, self.variant)
            self.space = self.variant.space
            self.dim = self.variant.dim
            self.threshold = self.variant.threshold
            self.version += f"/variant={self.variant.name}@{self.variant.short_hash}"

    @property
    def flip(self) -> bool:
        """Whether each view is also encoded mirrored and averaged in."""
        return self.options.flip

    @property
    def batch_size(self) -> int:
        """Chips per forward pass."""
        return self.options.batch_size

    @property
    def views(self) -> list[str]:
        """The views averaged per face: the alignments, then ``flip`` when mirrors are."""
        return [*self.options.alignments, *(["flip"] if self.options.flip else [])]

    def impostor_model(self, rule: str = "nearest"):
        """dlib's space has one; a variant's space has none yet (its fixed threshold holds)."""
        if self.variant is not None:
            return None
        from gate_plugins._dlib import impostor_model

        return impostor_model(rule)

    def _sp5(self):
        if self._predictor is None:
            from gate.recognition.nn.dlib_shape import load_shape_predictor

            self._predictor = load_shape_predictor()
        return self._predictor

    def _views(self, image: np.ndarray, face: Face) -> list[np.ndarray]:
        """The image->chip matrices of one face, one per configured view."""
        from gate.recognition.align import box_matrix, chip_matrix, similarity_fit, template

        matrices = []
        for view in self.options.alignments:
            try:
                if view == "landmarks" and face.landmarks is not None:
                    matrices.append(chip_matrix(face))
                elif view == "sp5":
                    x, y, w, h = face.box
                    box = (round(x), round(y), round(x + w), round(y + h))
                    points = self._sp5().predict(image, box)
                    matrices.append(similarity_fit(points, template("dlib5")))
            except ValueError:  # degenerate landmarks: fall back on the box below
                continue
        return matrices or [box_matrix(face)]

    def encode(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        return self.encode_many([(image, faces)])[0]

    def face_chips(self, image: np.ndarray, face: Face) -> list[np.ndarray]:
        """The aligned 150x150 RGB chips of one face in a BGR image, one per view."""
        from gate.recognition.align import extract_chip

        return [extract_chip(image, matrix)[:, :, ::-1] for matrix in self._views(image, face)]

    def encode_many(self, items: Sequence[tuple[np.ndarray, Sequence[Face]]]) -> list[np.ndarray]:
        """Encode the faces of several images in shared forward passes."""
        from gate.recognition.images import as_bgr
        from gate.recognition.nn.dlib_resnet import DESCRIPTOR_SIZE

        chips, owners = [], []
        for index, (image, faces) in enumerate(items):
            image = as_bgr(np.asarray(image))
            for number, face in enumerate(faces):
                for chip in self.face_chips(image, face):
                    chips.append(chip)
                    owners.append((index, number))
        size = DESCRIPTOR_SIZE
        vectors = self.descriptors(chips) if chips else np.zeros((0, size), np.float32)
        out = [np.zeros((len(faces), size), np.float32) for _, faces in items]
        counts = [np.zeros(len(faces)) for _, faces in items]
        for (index, number), vector in zip(owners, vectors, strict=True):
            out[index][number] += vector
            counts[index][number] += 1
        return [
            self.project(o / np.maximum(c, 1)[:, None]) for o, c in zip(out, counts, strict=True)
        ]

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """The variant's head applied to averaged network descriptors (as is without one)."""
        if self.head is None:
            return descriptors.astype(np.float32, copy=False)
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(descriptors, np.float32)).to(self.device)
            return self.head(x).cpu().numpy().astype(np.float32, copy=False)

    def descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Network descriptors (128-d, before any variant head) of aligned RGB chips."""
        import torch

        batch = np.ascontiguousarray(np.stack(chips))
        out = []
        step = self.options.batch_size
        with torch.inference_mode():
            for start in range(0, len(batch), step):
                x = torch.from_numpy(batch[start : start + step]).to(self.device)
                x = (
                    x.permute(0, 3, 1, 2)
                    .to(self.dtype)
                    .contiguous(memory_format=torch.channels_last)
                )
                y = self.model(x)
                if self.options.flip:
                    y = (y + self.model(torch.flip(x, dims=[3]))) / 2
                out.append(y.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def close(self) -> None:
        self.model = None
        self.head = None


@hookimpl
def register_encoders(register):
    register(DlibTorchEncoder)
