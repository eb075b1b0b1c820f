"""dlib's 128-d face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in torch.

The network is the metric-learning ResNet of dlib's ``dnn_face_recognition_ex.cpp``:

* input: a 150x150 RGB face chip aligned as ``dlib.get_face_chip`` does it; each channel has
  the mean stored in the model file subtracted and is divided by 256;
* stem: 7x7/2 convolution (32 filters, no padding), affine, ReLU, 3x3/2 max pooling;
* 14 residual blocks of two 3x3 convolutions, each followed by a per-channel affine (dlib's
  frozen batch norm): widths 32 x3, 64 x4, 128 x3, 256 x3 and 256 x1, where the first block
  of every group but the 32 one downsamples;
* downsampling blocks run their first convolution with stride 2 and *no padding*, and their
  shortcut is a 2x2/2 average pooling of the block input; as in dlib's ``add_prev`` the two
  branches are added after zero-padding each to the larger channel count and spatial size
  (channels and rows/columns are appended at the end). On 150x150 inputs this happens with
  channels at every width change and spatially in the last two downsampling blocks
  (3x3 + 4x4 -> 4x4 and 1x1 + 2x2 -> 2x2);
* global average pooling, then a 256 -> 128 fully connected layer without bias.

The output is the raw 128-d descriptor (dlib does not normalise it); faces match when the
Euclidean distance is below about 0.6.

Weights come from dlib's own ``.dat`` file, parsed by :mod:`.dlib_format`; dlib itself
is not needed. The converted state dict is cached in the user cache directory (or
``$GATE_CACHE_DIR``) under a name that contains the ``.dat`` file's sha256.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gate.recognition.nn.dlib_format import DlibFormatError, DlibNet, LayerRecord, read_dlib_net

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CHIP_SIZE",
    "DESCRIPTOR_SIZE",
    "MATCH_THRESHOLD",
    "DlibResNet",
    "cache_file",
    "chips_to_tensor",
    "convert_dlib_net",
    "default_model_path",
    "dlib_resnet_state_dict",
    "encode_chips",
    "load_dlib_resnet",
    "load_state_strict",
]

log = logging.getLogger(__name__)

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
MATCH_THRESHOLD = 0.6
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CACHE_ENV = "GATE_CACHE_DIR"
# Bump when the converted layout changes so stale cache files are not reused.
_CACHE_FORMAT = "gate-dlib-resnet-1"

# (output width, downsampling) for every residual block, input side first.
_BLOCKS: tuple[tuple[int, bool], ...] = (
    *[(32, False)] * 3,
    (64, True),
    *[(64, False)] * 3,
    (128, True),
    *[(128, False)] * 2,
    (256, True),
    *[(256, False)] * 2,
    (256, True),
)


class ChannelAffine(nn.Module):
    """dlib's ``affine_`` layer in convolution mode: ``x * weight[c] + bias[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: sum of two NCHW tensors, each zero-padded to the larger C, H, W."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down`` block (with affine layers instead of batch norm)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if downsample else (1, 1)
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=pad)
        self.affine1: nn.Module = ChannelAffine(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.affine2: nn.Module = ChannelAffine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.affine1(self.conv1(x)), inplace=True)
        y = self.affine2(self.conv2(y))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(_add_zero_padded(y, shortcut), inplace=True)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet; ``forward`` maps N x 3 x 150 x 150 RGB to N x 128.

    The input holds raw RGB pixel values in 0..255 (float or uint8; see
    :func:`chips_to_tensor`); the module applies dlib's input normalisation itself. Build it
    with :func:`load_dlib_resnet` to get the trained weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(1, 3, 1, 1))
        self.stem_conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.stem_affine: nn.Module = ChannelAffine(32)
        blocks, width = [], 32
        for out, down in _BLOCKS:
            blocks.append(ResidualBlock(width, out, down))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, DESCRIPTOR_SIZE, bias=False)
        self.channels_last = False
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.blocks(self.stem(x)))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input normalisation, the 7x7 convolution and the max pooling: what the blocks get."""
        weight = self.stem_conv.weight
        # (pixel - mean) / 256 in float32, as dlib's input_rgb_image_sized::to_tensor does.
        x = x.to(device=weight.device, dtype=torch.float32)
        x = (x - self.input_mean) * (1.0 / 256.0)
        if weight.dtype != torch.float32:
            x = x.to(weight.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.stem_affine(self.stem_conv(x)), inplace=True)
        return F.max_pool2d(x, 3, 2)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """The last blocks' output to the 128-d descriptor (average pooling, linear layer)."""
        return self.fc(h.mean(dim=(2, 3)))

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> DlibResNet:
        mean = self.input_mean
        super()._apply(fn, recurse)
        # The channel means stay float32 whatever the model dtype (bf16 has 122.782 -> 122.5).
        self.input_mean = mean.to(device=self.input_mean.device, dtype=torch.float32)
        return self

    def _conv_affine_pairs(self) -> Iterator[tuple[nn.Module, str, nn.Conv2d, nn.Module]]:
        yield self, "stem_affine", self.stem_conv, self.stem_affine
        for block in self.blocks:
            yield block, "affine1", block.conv1, block.affine1
            yield block, "affine2", block.conv2, block.affine2

    @torch.no_grad()
    def fuse_affine(self) -> DlibResNet:
        """Fold every affine layer into the convolution before it (in place; for inference).

        ``affine(conv(x)) = conv'(x)`` with ``W' = W * gamma`` and ``b' = b * gamma + beta``
        per output channel; computed in float64, then cast back. Returns ``self``.
        """
        if self.fused:
            return self
        for owner, name, conv, affine in self._conv_affine_pairs():
            assert isinstance(affine, ChannelAffine) and conv.bias is not None
            gamma = affine.weight.double()
            weight = conv.weight.double() * gamma.view(-1, 1, 1, 1)
            bias = conv.bias.double() * gamma + affine.bias.double()
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias.copy_(bias.to(conv.bias.dtype))
            setattr(owner, name, nn.Identity())
        self.fused = True
        return self

    def to_channels_last(self, enabled: bool = True) -> DlibResNet:
        """Use (or stop using) the channels-last memory format for weights and activations."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        return self


# ---------------------------------------------------------------------------------------------
# Conversion from dlib's file.


def _plan() -> list[tuple[str, str | None, dict[str, Any]]]:
    """Expected layer records in forward order: (kind, state-dict prefix, required settings)."""

    def con(prefix: str, filters: int, size: int, stride: int, pad: int) -> tuple:
        spec = dict(
            num_filters=filters,
            nr=size,
            nc=size,
            stride_y=stride,
            stride_x=stride,
            padding_y=pad,
            padding_x=pad,
            use_bias=True,
            use_relu=False,
        )
        return ("con", prefix, spec)

    def pool(kind: str, size: int, stride: int) -> tuple:
        spec = dict(nr=size, nc=size, stride_y=stride, stride_x=stride, padding_y=0, padding_x=0)
        return (kind, None, spec)

    relu = ("relu", None, {"disabled": False})
    tag = ("tag_or_skip", None, {})
    plan = [
        con("stem_conv", 32, 7, 2, 0),
        ("affine", "stem_affine", {}),
        relu,
        pool("max_pool", 3, 2),
    ]
    for i, (width, down) in enumerate(_BLOCKS):
        p = f"blocks.{i}"
        plan += [
            tag,  # tag1: the block input, read back by add_prev1 / skip1
            con(f"{p}.conv1", width, 3, 2 if down else 1, 0 if down else 1),
            ("affine", f"{p}.affine1", {}),
            relu,
            con(f"{p}.conv2", width, 3, 1, 1),
            ("affine", f"{p}.affine2", {}),
        ]
        if down:  # tag2 on the block output, skip1 back to the input, pooled shortcut
            plan += [tag, tag, pool("avg_pool", 2, 2)]
        plan += [("add_prev", None, {}), relu]
    plan += [
        pool("avg_pool", 0, 1),
        ("fc", "fc", dict(num_inputs=256, num_outputs=DESCRIPTOR_SIZE, use_bias=False)),
    ]
    return plan


def _layer_tensors(
    rec: LayerRecord, kind: str, where: str
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Torch parameter name -> (names of the file tensors it is made from, value)."""
    t = rec.tensors
    try:
        if kind == "con":
            return {"weight": (("weight",), t["weight"]), "bias": (("bias",), t["bias"])}
        if kind == "fc":  # dlib stores (inputs, outputs); torch wants (outputs, inputs)
            return {"weight": (("weight",), np.ascontiguousarray(t["weight"].T))}
        if kind != "affine":
            return {}
        if rec.attrs.get("mode") != "conv" or rec.attrs.get("disabled", False):
            raise DlibFormatError(f"{where}: expected an enabled convolution-mode affine layer")
        if rec.kind == "affine":
            return {"weight": (("gamma",), t["gamma"]), "bias": (("beta",), t["beta"])}
        # A batch-norm layer becomes an affine one exactly as dlib's affine_(bn_) does it.
        eps = np.float32(rec.attrs["eps"])
        scale = t["gamma"] / np.sqrt(t["running_variance"] + eps)
        shift = t["beta"] - scale * t["running_mean"]
        return {
            "weight": (("gamma", "running_variance"), scale.astype(np.float32)),
            "bias": (("beta", "running_mean"), shift.astype(np.float32)),
        }
    except KeyError as exc:
        raise DlibFormatError(f"{where}: missing parameter tensor {exc}") from None


def convert_dlib_net(net: DlibNet) -> dict[str, torch.Tensor]:
    """Map a parsed ``dlib_face_recognition_resnet_model_v1`` onto :class:`DlibResNet` keys.

    Every layer and setting is checked against the architecture, and every parameter tensor
    of the file must be used exactly once; a mismatch raises :class:`DlibFormatError`.
    """
    inp = net.input
    if inp.version != "input_rgb_image_sized" or (inp.attrs["nr"], inp.attrs["nc"]) != (150, 150):
        raise DlibFormatError(f"expected a 150x150 input_rgb_image_sized, got {inp.describe()}")
    if not net.loss.version.startswith("loss_metric"):
        raise DlibFormatError(f"expected a loss_metric network, got {net.loss.version!r}")
    plan = _plan()
    if len(net.layers) != len(plan):
        raise DlibFormatError(f"expected {len(plan)} layers, the file has {len(net.layers)}")

    mean = [inp.attrs["avg_red"], inp.attrs["avg_green"], inp.attrs["avg_blue"]]
    state: dict[str, torch.Tensor] = {
        "input_mean": torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    }
    for index, (rec, (kind, prefix, spec)) in enumerate(zip(net.layers, plan, strict=True)):
        where = f"layer {index} ({rec.version or rec.kind} at offset {rec.offset})"
        if rec.kind != kind and not (kind == "affine" and rec.kind == "bn"):
            raise DlibFormatError(f"{where}: expected a {kind} layer, found {rec.kind}")
        for key, want in spec.items():
            if rec.attrs.get(key) != want:
                raise DlibFormatError(f"{where}: {key}={rec.attrs.get(key)!r}, expected {want!r}")
        used: list[str] = []
        for name, (sources, array) in _layer_tensors(rec, kind, where).items():
            state[f"{prefix}.{name}"] = torch.from_numpy(np.ascontiguousarray(array))
            used += sources
        if sorted(used) != sorted(rec.tensors):
            extra = sorted(set(rec.tensors) - set(used))
            raise DlibFormatError(f"{where}: unexpected parameters {extra} (used {used})")
    return state


def _check_keys(state: dict[str, torch.Tensor]) -> None:
    """Same keys and shapes as DlibResNet's state dict, else DlibFormatError."""
    with torch.device("meta"):
        expected = DlibResNet().state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DlibFormatError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise DlibFormatError(
                f"{key}: shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )


def load_state_strict(model: DlibResNet, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; DlibFormatError on a missing or unexpected key or shape."""
    _check_keys(state)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# ---------------------------------------------------------------------------------------------
# Loading with a cache.


def default_model_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` from the face_recognition_models package."""
    from importlib.resources import files

    return Path(str(files("face_recognition_models") / "models" / MODEL_FILE))


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("gate"))


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def _cache_target(data: bytes, cache_dir: str | os.PathLike[str] | None) -> tuple[str, Path]:
    sha = hashlib.sha256(data).hexdigest()
    return sha, _cache_dir(cache_dir) / f"dlib_resnet_{sha}.pt"


def cache_file(
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the converted state dict of ``model_path`` is (or would be) cached."""
    path = Path(model_path) if model_path is not None else default_model_path()
    return _cache_target(path.read_bytes(), cache_dir)[1]


def _load_cached(path: Path, sha: str) -> dict[str, torch.Tensor] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["state_dict"]
        if blob["format"] != _CACHE_FORMAT or blob["source_sha256"] != sha:
            raise ValueError("cache written for another source or format")
        if blob["digest"] != _digest(state):
            raise ValueError("tensor digest mismatch")
        _check_keys(state)
        return state
    except FileNotFoundError:
        return None
    except Exception as exc:  # any corrupt or stale cache is rebuilt, never fatal
        log.warning("ignoring unusable cache file %s (%s); reconverting", path, exc)
        return None


def dlib_resnet_state_dict(
    model_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The converted state dict of a dlib ``.dat``, from the cache or converted (and cached).

    The cache file name contains the sha256 of the ``.dat``, so a changed file is converted
    again; an unreadable cache file is replaced. A cache directory that cannot be written
    only costs a warning.
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    data = path.read_bytes()
    sha, target = _cache_target(data, cache_dir)
    state = _load_cached(target, sha)
    if state is not None:
        return state

    net = read_dlib_net(data)
    state = convert_dlib_net(net)
    _check_keys(state)
    blob = {
        "format": _CACHE_FORMAT,
        "source_sha256": sha,
        "source": str(path),
        "digest": _digest(state),
        "state_dict": state,
    }
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("could not write cache file %s (%s)", target, exc)
        tmp.unlink(missing_ok=True)
    return state


def load_dlib_resnet(
    model_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    fuse: bool = True,
    channels_last: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DlibResNet:
    """The trained :class:`DlibResNet` in eval mode, without gradients.

    ``fuse`` folds the affine layers into the convolutions, ``channels_last`` switches the
    memory format; both are faster on CPU and stay within 1e-4 of dlib's descriptors.
    """
    model = DlibResNet()
    load_state_strict(model, dlib_resnet_state_dict(model_path, cache_dir=cache_dir))
    if fuse:
        model.fuse_affine()
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if channels_last:
        model.to_channels_last()
    return model


# ---------------------------------------------------------------------------------------------
# Input helpers.


def chips_to_tensor(chips: np.ndarray | Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """Aligned 150x150 chips -> float32 N x 3 x 150 x 150 tensor of RGB values in 0..255.

    Accepts one H x W x 3 uint8 RGB chip, a sequence of them, or an N x H x W x 3 array (or
    CPU tensor);
    grey H x W chips are replicated to three channels (as dlib does). The pixel values are
    not normalised: :class:`DlibResNet` subtracts dlib's channel means and divides by 256.
    """
    if isinstance(chips, torch.Tensor):
        chips = chips.numpy()
    if isinstance(chips, np.ndarray) and chips.ndim in (2, 3) and chips.shape[:2] == (150, 150):
        chips = [chips]
    arrays = []
    for i, chip in enumerate(chips):
        a = np.asarray(chip)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.shape != (CHIP_SIZE, CHIP_SIZE, 3) or a.dtype != np.uint8:
            raise ValueError(
                f"chip {i}: expected a 150x150x3 uint8 RGB image, got {a.shape} {a.dtype}"
            )
        arrays.append(a)
    if not arrays:
        return torch.empty(0, 3, CHIP_SIZE, CHIP_SIZE)
    batch = torch.from_numpy(np.stack(arrays))
    return batch.permute(0, 3, 1, 2).to(torch.float32).contiguous()


def encode_chips(
    model: DlibResNet,
    chips: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 32,
) -> np.ndarray:
    """Descriptors (N x 128 float32) of aligned 150x150 RGB chips, in batches."""
    if isinstance(chips, np.ndarray) and chips.ndim in (2, 3):
        chips = [chips]
    step = max(1, batch_size)
    device = next(model.parameters()).device
    out = [np.zeros((0, DESCRIPTOR_SIZE), np.float32)]
    with torch.inference_mode():
        for start in range(0, len(chips), step):
            x = chips_to_tensor(chips[start : start + step]).to(device)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out)
