"""Reader for dlib's binary DNN files (such as ``dlib_face_recognition_resnet_model_v1.dat``).

dlib writes a network ``add_loss_layer<LOSS, add_layer<L_n, ... add_layer<L_1, INPUT>>>`` by
nesting: the outer wrapper writes its version number, then its whole sub-network, and only then
its own layer's settings and parameters. The file therefore starts with the loss layer and a
run of wrapper version numbers (one per layer, outermost first), then the input layer, and then
the layer payloads from the first layer after the input to the last one before the loss.

Primitive encodings (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h):

* integer: a control byte (bit 7 = negative, low 4 bits = byte count) followed by the absolute
  value, little endian, in that many bytes;
* floating point (a scalar, not tensor data): two integers, a 64-bit mantissa then a 16-bit
  exponent, value = mantissa * 2**exponent (exponents 32000/32001/32002 mean inf/-inf/nan);
* bool: the ASCII byte ``'1'`` or ``'0'``;
* string: an unsigned length then the raw bytes;
* tensor: version 2, then num_samples, k, nr, nc, then the values as little-endian float32;
* alias tensor (a shape only): version 1, then num_samples, k, nr, nc.

Tag and skip layers (``tag1``, ``skip1``, ...) store only a version number (1) and nothing
about which tag they are; the reader reports them as ``tag_or_skip`` records at their place in
the layer sequence and leaves their meaning to whoever knows the architecture. Wrapper version
1 of a plain ``add_layer`` (dlib before 2017) would be indistinguishable from them and is not
supported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DlibFormatError", "DlibNet", "LayerRecord", "read_dlib_net"]

_MAX_STRING = 1 << 16
_MAX_LAYERS = 100_000
_MAX_ELEMENTS = 1 << 40
# Special exponent values of dlib's float_details.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
    """The file is truncated or corrupt, or uses something this reader does not understand."""


@dataclass
class LayerRecord:
    """One layer of a dlib network as stored in the file.

    ``kind`` is a short name: ``con``, ``fc``, ``affine``, ``bn``, ``relu``, ``add_prev``,
    ``max_pool``, ``avg_pool``, ``tag_or_skip``, ``input`` or ``loss``. ``version`` is dlib's
    own version string (``con_6``, ``affine_2``, ...). ``offset`` is the byte offset of the
    layer's payload. ``tensors`` holds the learned parameters as float32 numpy arrays;
    ``aux`` holds other tensors the file carries (training state such as cached outputs,
    gradients and batch statistics), which are not needed for inference.
    """

    kind: str
    version: str
    offset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: kind, settings and parameter shapes."""
        settings = ", ".join(f"{k}={v}" for k, v in self.attrs.items() if "mult" not in k)
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.tensors.items())
        text = f"{self.kind:<11} {self.version:<22} @{self.offset:<9}"
        return " ".join(t for t in (text, settings, shapes) if t).rstrip()


@dataclass
class DlibNet:
    """A parsed network: its loss layer, its input layer and its layers in forward order."""

    loss: LayerRecord
    input: LayerRecord
    layers: list[LayerRecord]

    def describe(self) -> str:
        """Multi-line listing, input first, loss last."""
        lines = [f"{i:3d} {r.describe()}" for i, r in enumerate(self.layers)]
        return "\n".join([f"in  {self.input.describe()}", *lines, f"out {self.loss.describe()}"])

    def parameter_count(self) -> int:
        """Number of learned scalars stored in the file."""
        return sum(int(t.size) for r in self.layers for t in r.tensors.values())


class _Stream:
    """Cursor over the file bytes with dlib's primitive decoders and located errors."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source
        self.context = "network header"

    def fail(self, message: str, offset: int | None = None) -> DlibFormatError:
        where = self.pos if offset is None else offset
        return DlibFormatError(
            f"{self.source}: invalid dlib DNN file at byte offset {where} "
            f"(while reading {self.context}): {message}"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            left = len(self.data) - self.pos
            raise self.fail(f"unexpected end of file reading {what} (need {n} bytes, {left} left)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str, nbytes: int, signed: bool) -> int:
        start = self.pos
        control = self.take(1, what)[0]
        if signed:
            negative = bool(control & 0x80)
            size = control & 0x0F
        else:
            negative = False
            size = control & 0x8F
        if size == 0 or size > nbytes:
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        if negative:
            value = -value
        bits = 8 * nbytes
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if not low <= value <= high:
            raise self.fail(f"{what} = {value} does not fit in {bits} bits", start)
        return value

    def int32(self, what: str) -> int:
        return self.integer(what, 4, True)

    def int64(self, what: str) -> int:
        return self.integer(what, 8, True)

    def uint32(self, what: str) -> int:
        return self.integer(what, 4, False)

    def uint64(self, what: str) -> int:
        return self.integer(what, 8, False)

    def real(self, what: str, single: bool = False) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what} uses dlib's old text float format, which is not supported")
        mantissa = self.integer(f"{what} (mantissa)", 8, True)
        exponent = self.integer(f"{what} (exponent)", 2, True)
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent >= _EXP_INF:
            return math.nan
        base = float(np.float32(mantissa)) if single else float(mantissa)
        try:
            value = math.ldexp(base, exponent)
        except OverflowError:
            value = math.copysign(math.inf, mantissa)
        if single:
            with np.errstate(over="ignore"):
                return float(np.float32(value))
        return value

    def boolean(self, what: str) -> bool:
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {byte!r} for {what}", self.pos - 1)
        return byte == b"1"

    def string(self, what: str) -> str:
        start = self.pos
        size = self.uint64(f"{what} (length)")
        if size > _MAX_STRING:
            raise self.fail(f"implausible string length {size} for {what}", start)
        raw = self.take(size, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not an ASCII string: {raw[:40]!r}", start) from None

    def dims(self, what: str) -> tuple[int, int, int, int]:
        shape = tuple(self.int64(f"{what} dimension {i}") for i in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"negative dimension in {what}: {shape}")
        if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
            raise self.fail(f"implausible shape for {what}: {shape}")
        return shape  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        version = self.int32(f"{what} (tensor version)")
        if version != 2:
            raise self.fail(f"expected tensor version 2 for {what}, found {version}", start)
        shape = self.dims(what)
        count = math.prod(shape)
        raw = self.take(4 * count, f"{what} data {shape}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        version = self.int32(f"{what} (alias tensor version)")
        if version != 1:
            raise self.fail(f"expected alias tensor version 1 for {what}, found {version}", start)
        return self.dims(what)


def _multipliers(s: _Stream, rec: LayerRecord) -> None:
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        rec.attrs[name] = s.real(name)


def _split_params(s: _Stream, flat: np.ndarray, sizes: list[int], what: str) -> list[np.ndarray]:
    if flat.size != sum(sizes):
        raise s.fail(f"{what}: parameter tensor holds {flat.size} values, expected {sum(sizes)}")
    out, start = [], 0
    for n in sizes:
        out.append(flat[start : start + n].copy())
        start += n
    return out


def _read_con(s: _Stream, rec: LayerRecord) -> None:
    params = s.tensor("params").reshape(-1)
    a = rec.attrs
    a["num_filters"] = s.int64("num_filters")
    a["nr"], a["nc"] = s.int64("nr"), s.int64("nc")
    a["stride_y"], a["stride_x"] = s.int32("stride_y"), s.int32("stride_x")
    a["padding_y"], a["padding_x"] = s.int32("padding_y"), s.int32("padding_x")
    filters = s.alias("filters")
    s.alias("biases")
    _multipliers(s, rec)
    a["use_bias"] = s.boolean("use_bias") if rec.version in ("con_5", "con_6") else True
    a["use_relu"] = s.boolean("use_relu") if rec.version == "con_6" else False
    if filters[0] != a["num_filters"]:
        raise s.fail(f"filter shape {filters} disagrees with num_filters={a['num_filters']}")
    sizes = [math.prod(filters)] + ([a["num_filters"]] if a["use_bias"] else [])
    parts = _split_params(s, params, sizes, "con")
    rec.tensors["weight"] = parts[0].reshape(filters)
    if a["use_bias"]:
        rec.tensors["bias"] = parts[1]


def _read_fc(s: _Stream, rec: LayerRecord) -> None:
    a = rec.attrs
    a["num_outputs"], a["num_inputs"] = s.uint64("num_outputs"), s.uint64("num_inputs")
    params = s.tensor("params").reshape(-1)
    weights = s.alias("weights")
    s.alias("biases")
    a["bias_mode"] = s.int32("bias_mode")
    _multipliers(s, rec)
    use_bias = s.boolean("use_bias") if rec.version == "fc_3" else True
    a["use_bias"] = use_bias and a["bias_mode"] == 0
    if math.prod(weights) != a["num_inputs"] * a["num_outputs"]:
        raise s.fail(f"weight shape {weights} disagrees with {a['num_inputs']}x{a['num_outputs']}")
    sizes = [a["num_inputs"] * a["num_outputs"]] + ([a["num_outputs"]] if a["use_bias"] else [])
    parts = _split_params(s, params, sizes, "fc")
    # dlib computes output = input @ weight, so the stored layout is (num_inputs, num_outputs).
    rec.tensors["weight"] = parts[0].reshape(a["num_inputs"], a["num_outputs"])
    if a["use_bias"]:
        rec.tensors["bias"] = parts[1]


def _gamma_beta(
    s: _Stream, rec: LayerRecord, params: np.ndarray, gamma: tuple, beta: tuple
) -> None:
    if gamma != beta:
        raise s.fail(f"gamma shape {gamma} differs from beta shape {beta}")
    # Convolution mode keeps one value per channel; fc mode one per element of a sample.
    shape = (gamma[1],) if rec.attrs["mode"] == "conv" else gamma[1:]
    g, b = _split_params(s, params, [math.prod(gamma), math.prod(beta)], rec.kind)
    rec.tensors["gamma"], rec.tensors["beta"] = g.reshape(shape), b.reshape(shape)


def _layer_mode(s: _Stream, value: int) -> str:
    if value not in (0, 1):
        raise s.fail(f"unknown layer mode {value}")
    return "conv" if value == 0 else "fc"


def _read_affine(s: _Stream, rec: LayerRecord) -> None:
    params = s.tensor("params").reshape(-1)
    gamma, beta = s.alias("gamma"), s.alias("beta")
    rec.attrs["mode"] = _layer_mode(s, s.int32("mode"))
    rec.attrs["disabled"] = s.boolean("disabled") if rec.version == "affine_2" else False
    if not rec.attrs["disabled"]:
        _gamma_beta(s, rec, params, gamma, beta)


def _read_bn(s: _Stream, rec: LayerRecord) -> None:
    rec.attrs["mode"] = "conv" if rec.version == "bn_con2" else "fc"
    params = s.tensor("params").reshape(-1)
    gamma, beta = s.alias("gamma"), s.alias("beta")
    rec.aux["batch_means"] = s.tensor("means")
    rec.aux["batch_invstds"] = s.tensor("invstds")
    running_means = s.tensor("running_means").reshape(-1)
    running_variances = s.tensor("running_variances").reshape(-1)
    rec.attrs["num_updates"] = s.uint64("num_updates")
    rec.attrs["running_stats_window_size"] = s.uint64("running_stats_window_size")
    _multipliers(s, rec)
    rec.attrs["eps"] = s.real("eps")
    _gamma_beta(s, rec, params, gamma, beta)
    shape = rec.tensors["gamma"].shape
    if running_means.size != math.prod(shape) or running_variances.size != math.prod(shape):
        raise s.fail("running statistics do not match the gamma shape")
    rec.tensors["running_mean"] = running_means.reshape(shape)
    rec.tensors["running_variance"] = running_variances.reshape(shape)


def _read_relu(s: _Stream, rec: LayerRecord) -> None:
    rec.attrs["disabled"] = s.boolean("disabled") if rec.version == "relu_2" else False


def _read_nothing(s: _Stream, rec: LayerRecord) -> None:
    return None


def _read_pool(s: _Stream, rec: LayerRecord) -> None:
    a = rec.attrs
    a["nr"], a["nc"] = s.int64("nr"), s.int64("nc")
    a["stride_y"], a["stride_x"] = s.int32("stride_y"), s.int32("stride_x")
    a["padding_y"], a["padding_x"] = s.int32("padding_y"), s.int32("padding_x")


_Parser = Callable[[_Stream, LayerRecord], None]

_LAYERS: dict[str, tuple[str, _Parser]] = {
    "con_4": ("con", _read_con),
    "con_5": ("con", _read_con),
    "con_6": ("con", _read_con),
    "fc_2": ("fc", _read_fc),
    "fc_3": ("fc", _read_fc),
    "affine_": ("affine", _read_affine),
    "affine_2": ("affine", _read_affine),
    "bn_con2": ("bn", _read_bn),
    "bn_fc2": ("bn", _read_bn),
    "relu_": ("relu", _read_relu),
    "relu_2": ("relu", _read_relu),
    "add_prev_": ("add_prev", _read_nothing),
    "max_pool_2": ("max_pool", _read_pool),
    "avg_pool_2": ("avg_pool", _read_pool),
}


def _read_input(s: _Stream, name: str, offset: int) -> LayerRecord:
    rec = LayerRecord("input", name, offset)
    if name not in ("input_rgb_image", "input_rgb_image_sized"):
        raise s.fail(f"unsupported input layer {name!r}", offset)
    for colour in ("avg_red", "avg_green", "avg_blue"):
        rec.attrs[colour] = s.real(colour, single=True)
    if name == "input_rgb_image_sized":
        rec.attrs["nr"], rec.attrs["nc"] = s.uint64("nr"), s.uint64("nc")
    return rec


def _read_loss(s: _Stream) -> LayerRecord:
    offset = s.pos
    name = s.string("loss layer name")
    rec = LayerRecord("loss", name, offset)
    if name == "loss_metric_":
        rec.attrs.update(margin=0.1, dist_thresh=0.75)  # values fixed by that old version
    elif name == "loss_metric_2":
        rec.attrs["margin"] = s.real("margin", single=True)
        rec.attrs["dist_thresh"] = s.real("dist_thresh", single=True)
    else:
        raise s.fail(f"unsupported loss layer {name!r}", offset)
    return rec


def _read_layer(s: _Stream, index: int) -> LayerRecord:
    offset = s.pos
    s.context = f"layer {index} (counting from the input)"
    name = s.string("layer type")
    if name not in _LAYERS:
        raise s.fail(f"unsupported or unknown layer type {name!r}", offset)
    kind, parser = _LAYERS[name]
    s.context = f"layer {index} ({name} at offset {offset})"
    rec = LayerRecord(kind, name, offset)
    parser(s, rec)
    return rec


def _read_wrapper_trailer(s: _Stream, rec: LayerRecord, on_input: bool, version: int) -> None:
    """The add_layer bookkeeping written after the layer's own payload."""
    for flag in ("setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
        s.boolean(flag)
    rec.aux["x_grad"] = s.tensor("x_grad")
    rec.aux["cached_output"] = s.tensor("cached_output")
    if on_input:
        rec.aux["grad_final"] = s.tensor("grad_final")
        if version >= 3:
            rec.attrs["sample_expansion_factor"] = s.uint32("sample_expansion_factor")
    else:
        rec.aux["params_grad"] = s.tensor("params_grad")


def _parse(s: _Stream) -> DlibNet:
    loss_version = s.int32("loss layer version")
    if loss_version != 1:
        raise s.fail(f"expected add_loss_layer version 1, found {loss_version}", 0)
    s.context = "loss layer"
    loss = _read_loss(s)

    # Wrapper versions, outermost first, until the input layer's name appears.
    s.context = "layer wrappers"
    wrappers: list[tuple[int, int]] = []
    while True:
        offset = s.pos
        value = s.uint64("layer wrapper version or input layer name length")
        if value > 3:
            s.pos = offset
            name = s.string("input layer name")
            if not name.startswith("input"):
                raise s.fail(f"expected an input layer, found {name!r}", offset)
            s.context = "input layer"
            net_input = _read_input(s, name, offset)
            break
        if value == 0:
            raise s.fail("layer wrapper version 0", offset)
        wrappers.append((value, offset))
        if len(wrappers) > _MAX_LAYERS:
            raise s.fail("too many layers")
    if not wrappers:
        raise s.fail("network has no layers")

    layers: list[LayerRecord] = []
    for index, (version, offset) in enumerate(reversed(wrappers)):
        if index == 0:
            if version not in (2, 3):
                raise s.fail(f"first layer wrapper has version {version}, expected 2 or 3", offset)
            rec = _read_layer(s, index)
            _read_wrapper_trailer(s, rec, on_input=True, version=version)
        elif version == 2:
            rec = _read_layer(s, index)
            _read_wrapper_trailer(s, rec, on_input=False, version=version)
        elif version == 1:
            rec = LayerRecord("tag_or_skip", "", offset)
        else:
            raise s.fail(f"unexpected layer wrapper version {version}", offset)
        layers.append(rec)

    s.context = "end of network"
    if s.pos != len(s.data):
        raise s.fail(f"{len(s.data) - s.pos} unexpected trailing bytes")
    return DlibNet(loss=loss, input=net_input, layers=layers)


def read_dlib_net(source: str | os.PathLike[str] | bytes) -> DlibNet:
    """Parse a dlib DNN file (a path or its bytes); raise DlibFormatError (a ValueError)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "<bytes>"
    else:
        data, name = Path(source).read_bytes(), os.fspath(source)
    return _parse(_Stream(data, name))
