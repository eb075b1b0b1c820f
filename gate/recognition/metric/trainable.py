"""What ``gate train`` needs from an encoder: the :class:`TrainableEncoder` protocol.

Training never imports an encoder by name: the caller builds the encoder (and the detector)
from the plugins' registry and hands them to :func:`gate.recognition.metric.train.train`,
which reads only what this protocol names. An encoder is trainable when it has these members;
it need not inherit from anything here. Importing this module does not import torch.

A variant file records the network it was trained on (:mod:`.head`: dlib's ResNet, space
``dlib-resnet-v1``, 128-d), so today that is the network a trainable encoder must run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from gate.components import Face
    from gate.recognition.nn.dlib_resnet import DlibResNet

__all__ = ["TrainableEncoder"]


@runtime_checkable
class TrainableEncoder(Protocol):
    """An encoder whose network a projection head (and fine-tuned last blocks) can adapt.

    Training runs the encoder's own ``model`` on the encoder's own chips, so a variant sees
    faces exactly as the encoder will: aligned by :meth:`face_chips`, mirrored when
    :attr:`flip`, the views' descriptors averaged.
    """

    #: Options that training sets over the config's section for this encoder, so that it
    #: starts from the base network (no variant) at full precision.
    training_options: ClassVar[Mapping[str, Any]]
    #: The embedding space, its size and the match distance of the encoder as built.
    space: str
    dim: int
    threshold: float
    #: The network (float32), on :attr:`device`; training changes its last blocks only
    #: while it runs and puts them back.
    model: DlibResNet
    device: str

    @property
    def flip(self) -> bool:
        """Whether each view is also encoded mirrored and averaged in."""
        ...

    @property
    def batch_size(self) -> int:
        """Chips per forward pass."""
        ...

    @property
    def views(self) -> list[str]:
        """The names of the views averaged per face, ``flip`` last when mirrors are."""
        ...

    def face_chips(self, image: np.ndarray, face: Face) -> list[np.ndarray]:
        """The aligned RGB chips of one face in a BGR image, one per view (not mirrored)."""
        ...
