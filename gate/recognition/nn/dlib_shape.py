"""dlib's ``shape_predictor`` (face landmarks) read from its ``.dat`` file and run in numpy.

This is a reimplementation, written from dlib's ``dlib/image_processing/shape_predictor.h``,
of the ensemble-of-regression-trees landmark predictor (Kazemi and Sullivan, 2014), meant to
give *the same points as dlib* (see ``tests/test_dlib_shape.py``) without importing dlib.

File format (dlib's ``serialize``; every primitive is one of dlib's variable-length integers,
a float being two of them, a 64-bit mantissa then a 16-bit exponent; see
:mod:`gate.recognition.nn.dlib_format`)::

    int version (1)
    matrix<float,0,1> initial_shape     long -nr, long -nc (= -1), then nr floats (x0 y0 x1 ...)
    vector<vector<regression_tree>>     forests: unsigned long count, per cascade level
        vector<regression_tree>             unsigned long count, per tree
            vector<split_feature> splits        count, then (ulong idx1, ulong idx2, float thresh)
            vector<matrix<float,0,1>> leaves    count, then one matrix as above per leaf
    vector<vector<unsigned long>> anchor_idx   per level: the shape point each pixel hangs on
    vector<vector<vector<float,2>>> deltas     per level: the pixel's offset (x, y) from it

Prediction, as dlib does it (all shape arithmetic in float32, transforms in float64):

* the shape lives in the box's normalised frame, where (0, 0) is the rectangle's top-left corner
  and (1, 1) its bottom-right one: ``x_img = left + (right - left) * x`` (dlib's
  ``unnormalizing_tform``; ``right`` and ``bottom`` are the inclusive corners of a
  ``dlib.rectangle``, so the width used is ``right - left``, not ``+ 1``);
* at each cascade level the similarity transform from the initial to the current shape
  (Umeyama, cast to float32) maps each feature pixel's stored delta, which is added to its
  anchor point of the current shape (float32: ``(m00*dx + m01*dy) + ax``); the point is mapped
  to the image in float64 and rounded as ``floor(v + 0.5)``;
* a pixel outside the image reads as 0; inside, a colour pixel reads as
  ``(r + g + b) // 3`` (dlib's ``assign_pixel`` to ``unsigned char``, an integer mean rounded
  down, the same for BGR), a grey pixel as itself;
* a tree goes to the left child (``2i + 1``) when ``value[idx1] - value[idx2] > thresh``
  (strictly; on equality it goes right, ``2i + 2``); its leaf vector is added to the shape,
  tree after tree in file order (float32 additions, so the order is kept here too);
* the returned points are ``left + (right - left) * x`` etc. in float64; dlib rounds them to
  integer pixels with ``floor(v + 0.5)`` (:func:`round_like_dlib`).

Where dlib gets a float64 transform from an SVD (``find_affine_transform`` for the box,
``find_similarity_transform`` between shapes), the exact closed forms are used here; they can
differ from dlib's in the last bits of a double, which matters only for a value within a few
ulps of a rounding boundary (not seen on the test faces). The 5-point model has 15 cascade
levels of 500 trees of depth 4 over 800 feature pixels per level.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gate.recognition.nn.dlib_format import DlibFormatError, _Stream

__all__ = [
    "MODEL_FILE",
    "CascadeLevel",
    "DlibFormatError",
    "ShapePredictor",
    "default_model_path",
    "load_shape_predictor",
    "read_shape_predictor",
    "round_like_dlib",
]

MODEL_FILE = "shape_predictor_5_face_landmarks.dat"

_T = TypeVar("_T")

_MAX_DEPTH = 20  # trees deeper than this are not plausible (2**20 leaves each)
_CHUNK = 1 << 22  # bytes tokenised per regular-expression pass

# One dlib integer: a control byte whose low nibble (1..8) is the payload length and whose bit 7
# is the sign, then the payload. ``_TOKEN_LEN`` maps a byte to the length of the token it would
# start (0 for a byte that cannot be a control byte).
_TOKEN = re.compile(
    b"(?s)"
    + b"|".join(
        b"[" + re.escape(bytes([k])) + re.escape(bytes([k | 0x80])) + b"]" + b".{%d}" % k
        for k in range(1, 9)
    )
)
_PAYLOAD_MASK = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_TOKEN_LEN = np.array([1 + (c & 0x0F) if 1 <= (c & 0x7F) <= 8 else 0 for c in range(256)])


class _ShapeStream(_Stream):
    """dlib_format's primitive reader, with errors that name the shape predictor file."""

    def fail(self, message: str, offset: int | None = None) -> DlibFormatError:
        where = self.pos if offset is None else offset
        return DlibFormatError(
            f"{self.source}: invalid dlib shape_predictor file at byte offset {where} "
            f"(while reading {self.context}): {message}"
        )


class _Tokens:
    """The file as a sequence of dlib integers, decoded at once, with a cursor over them.

    Scalars are read through :class:`_ShapeStream` at the token's offset (its checks and
    messages); runs of integers and floats are decoded with numpy and checked the same way.
    """

    def __init__(self, data: bytes, source: str) -> None:
        self.stream = _ShapeStream(data, source)
        self.size = len(data)
        starts, lens = self._tokenise(data)
        self.starts = starts
        self.end = int(starts[-1] + lens[-1]) if starts.size else 0
        raw = np.frombuffer(data + bytes(8), dtype=np.uint8)
        self.negative = raw[starts] >= 0x80
        self.nbytes = (lens - 1).astype(np.int8)
        # Each payload read as 8 little-endian bytes, then cut to its length.
        windows = np.lib.stride_tricks.as_strided(raw, (len(data) + 1, 8), (1, 1))
        mag = windows[starts + 1].view("<u8").reshape(-1)
        self.magnitude = mag & _PAYLOAD_MASK[self.nbytes]
        self.k = 0

    @staticmethod
    def _tokenise(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Start offsets and lengths of the longest run of whole tokens from offset 0."""
        table = _TOKEN_LEN
        raw = np.frombuffer(data, dtype=np.uint8)
        all_starts: list[np.ndarray] = []
        all_lens: list[np.ndarray] = []
        pos, n = 0, len(data)
        while pos < n:
            found = _TOKEN.findall(data, pos, min(n, pos + _CHUNK))
            lens = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
            starts = pos + np.cumsum(lens) - lens
            # findall skips bytes where no token starts (a bad control byte, or a token cut by
            # the end of the chunk or file). The first token whose assumed start does not hold
            # a control byte announcing its length marks where the back-to-back run ends.
            good = table[raw[starts]] == lens
            cut = int(np.argmin(good)) if not good.all() else len(found)
            if cut == 0:
                break
            all_starts.append(starts[:cut])
            all_lens.append(lens[:cut])
            pos = int(starts[cut - 1] + lens[cut - 1])
        if not all_starts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(all_starts), np.concatenate(all_lens)

    # -- positions and errors

    @property
    def count(self) -> int:
        return int(self.starts.size)

    def offset(self, k: int | None = None) -> int:
        k = self.k if k is None else k
        return int(self.starts[k]) if k < self.count else self.end

    def fail(self, message: str, k: int | None = None) -> DlibFormatError:
        return self.stream.fail(message, self.offset(k))

    def need(self, n: int, what: str) -> None:
        """Make sure ``n`` more tokens follow; else raise the reader's error at the first gap."""
        if n < 0 or self.k + n <= self.count:
            return
        s = self.stream
        s.pos = self.end
        s.integer(what, 8, True)  # raises: end of file, or a byte that is no control byte
        # dlib's reader ignores the reserved bits 0x70 of a control byte; dlib never sets them.
        raise self.fail(
            f"control byte 0x{self.stream.data[self.end]:02x} has reserved bits set", self.count
        )

    def context(self, text: str) -> None:
        self.stream.context = text

    # -- scalars (through dlib_format's reader)

    def scalar(self, what: str, kind: str = "uint64") -> int:
        self.need(1, what)
        s = self.stream
        s.pos = self.offset()
        value = getattr(s, kind)(what)
        self.k += 1
        return value

    def room(self, n: int, what: str, start: int) -> None:
        """Check that ``n`` tokens can follow; a size read at token ``start`` asked for them."""
        if n > self.count - self.k:
            if self.end < self.size:
                self.need(n, f"what follows {what}")  # the data stop early: where and why
            raise self.fail(
                f"{what} needs more than the {self.size - self.offset()} bytes left "
                "(truncated or corrupt file)",
                start,
            )

    def count_of(self, what: str, per_item: int) -> int:
        """An ``unsigned long`` element count that must fit in the tokens that are left."""
        start = self.k
        n = self.scalar(what)
        self.room(n * per_item, f"{what} = {n}", start)
        return n

    # -- runs (vectorised, same checks as the scalar readers)

    def _first_bad(self, bad: np.ndarray, ks: np.ndarray, what: str, floats: bool) -> None:
        """Re-read the first flagged value with dlib_format's reader for its error."""
        if not bad.any():
            return
        k = int(ks.reshape(-1)[int(np.argmax(bad.reshape(-1)))])
        s = self.stream
        s.pos = self.offset(k)
        value = s.real(what, single=True) if floats else s.uint64(what)  # raises if malformed
        raise self.fail(f"{what} is {value}, which is not a finite float32 value", k)

    def uints(self, ks: np.ndarray, what: str) -> np.ndarray:
        """Unsigned 64-bit integers at token indices ``ks``."""
        self._first_bad(self.negative[ks], ks, what, floats=False)
        return self.magnitude[ks]

    def floats(self, ks: np.ndarray, what: str) -> np.ndarray:
        """float32 values of the mantissa/exponent pairs starting at token indices ``ks``."""
        mk, ek = ks, ks + 1
        mag_m, mag_e = self.magnitude[mk], self.magnitude[ek]
        neg_m, neg_e = self.negative[mk], self.negative[ek]
        bad = (self.nbytes[ek] > 2) | (
            mag_m > np.where(neg_m, np.uint64(2**63), np.uint64(2**63 - 1))
        )
        bad |= mag_e > np.where(neg_e, np.uint64(32768), np.uint64(32767))
        mantissa = np.where(neg_m, -mag_m.astype(np.int64), mag_m.astype(np.int64))
        exponent = np.where(neg_e, -mag_e.astype(np.int64), mag_e.astype(np.int64))
        bad |= exponent >= 32000  # dlib's markers for inf, -inf and nan
        exp32 = np.clip(exponent, -(2**15), 2**15).astype(np.int32)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.ldexp(mantissa.astype(np.float32), exp32)
        bad |= ~np.isfinite(values)
        self._first_bad(bad, mk, what, floats=True)
        return values.astype(np.float32)

    def float_matrix(self, expect: int | None, what: str) -> np.ndarray:
        """A ``matrix<float,0,1>``: long -nr, long -nc, then nr float values.

        ``expect``: the required number of values, or None for any positive even number.
        """
        start = self.k
        nr = self.scalar(f"{what} rows", "int64")
        nc = self.scalar(f"{what} columns", "int64")
        if nr < 0 or nc < 0:  # dlib's newer format stores both sizes negated
            nr, nc = -nr, -nc
        if nc != 1 or nr < 0:
            raise self.fail(f"{what} has shape {nr}x{nc}, expected a column vector", start)
        if expect is not None and nr != expect:
            raise self.fail(f"{what} has {nr} values, expected {expect}", start)
        if expect is None and (nr == 0 or nr % 2):
            raise self.fail(f"{what} has {nr} values, expected a positive even number", start)
        self.room(2 * nr, f"{what} of {nr} values", start)
        ks = self.k + 2 * np.arange(nr)
        self.k += 2 * nr
        return self.floats(ks, what)


@dataclass(frozen=True)
class CascadeLevel:
    """One cascade level: its feature pixels and its trees, stacked as arrays.

    ``anchor_idx`` (F,) and ``deltas`` (F, 2) place the F feature pixels relative to the shape
    points; ``split_idx1`` / ``split_idx2`` / ``split_thresh`` (T, S) are the T trees' split
    nodes in heap order (children of node i at 2i+1 and 2i+2) and ``leaf_values`` (T, S+1, D)
    their leaf vectors. Trees of a level shallower than the deepest one are padded (exactly:
    a dummy split always going right, each leaf repeated); ``tree_depths`` keeps the depths
    found in the file.
    """

    anchor_idx: np.ndarray
    deltas: np.ndarray
    split_idx1: np.ndarray
    split_idx2: np.ndarray
    split_thresh: np.ndarray
    leaf_values: np.ndarray
    tree_depths: np.ndarray

    @property
    def num_trees(self) -> int:
        return int(self.split_idx1.shape[0])

    @property
    def depth(self) -> int:
        return int(self.split_idx1.shape[1] + 1).bit_length() - 1


def _pad_tree(
    idx1: np.ndarray, idx2: np.ndarray, thresh: np.ndarray, leaves: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grow a complete tree of smaller depth to ``depth`` without changing its output."""
    own = int(leaves.shape[0]).bit_length() - 1
    extra = (1 << depth) - 1 - idx1.size
    reps = 1 << (depth - own)
    zeros = np.zeros(extra, dtype=idx1.dtype)
    # Dummy splits compare a pixel with itself (0 > 0 is false: always right); every leaf is
    # repeated so that whichever descendant is reached holds the same vector.
    return (
        np.concatenate([idx1, zeros]),
        np.concatenate([idx2, zeros]),
        np.concatenate([thresh, np.zeros(extra, np.float32)]),
        np.repeat(leaves, reps, axis=0),
    )


def _parse(t: _Tokens) -> tuple[np.ndarray, list[CascadeLevel]]:
    t.context("shape_predictor version")
    version = t.scalar("version", "int32")
    if version != 1:
        raise t.fail(f"expected shape_predictor version 1, found {version}", 0)

    t.context("initial_shape")
    initial = t.float_matrix(None, "initial_shape")
    dims = initial.size

    t.context("forests")
    n_levels = t.count_of("number of cascade levels", 1)
    forests: list[list[tuple[int, int, int, int]]] = []  # (split token, S, leaf token, L)
    leaf_len = 2 + 2 * dims  # tokens per leaf matrix: -nr, -nc, dims floats
    for level in range(n_levels):
        t.context(f"forests[{level}]")
        n_trees = t.count_of("number of trees", 2)
        trees = []
        for tree in range(n_trees):
            t.context(f"forests[{level}][{tree}]")
            n_splits = t.count_of("number of splits", 4)
            split_k = t.k
            t.k += 4 * n_splits
            leaf_start = t.k
            n_leaves = t.count_of("number of leaves", leaf_len)
            if n_leaves != n_splits + 1 or n_leaves & (n_leaves - 1):
                raise t.fail(
                    f"tree has {n_splits} splits and {n_leaves} leaves; dlib needs a complete "
                    "binary tree (a power of two leaves, one more than splits)",
                    leaf_start,
                )
            if n_leaves > 1 << _MAX_DEPTH:
                raise t.fail(f"implausible tree with {n_leaves} leaves", leaf_start)
            leaf_k = t.k
            head = leaf_k + leaf_len * np.arange(n_leaves)
            nr = t.magnitude[head].astype(np.int64)
            nc = t.magnitude[head + 1].astype(np.int64)
            ok = (nr == dims) & (nc == 1) & (t.negative[head] == t.negative[head + 1])
            if not ok.all():
                j = int(np.argmin(ok))
                t.k = int(head[j])
                t.float_matrix(dims, f"leaf value {j}")  # raises with the precise reason
                raise t.fail(f"leaf value {j} is malformed", int(head[j]))  # pragma: no cover
            t.k += leaf_len * n_leaves
            trees.append((split_k, n_splits, leaf_k, n_leaves))
        forests.append(trees)

    t.context("anchor_idx")
    n_anchor_levels = t.count_of("number of anchor_idx levels", 1)
    if n_anchor_levels != n_levels:
        raise t.fail(f"{n_anchor_levels} anchor_idx levels for {n_levels} cascade levels")
    anchors: list[np.ndarray] = []
    for level in range(n_levels):
        t.context(f"anchor_idx[{level}]")
        start = t.k
        n = t.count_of("number of feature pixels", 1)
        ks = t.k + np.arange(n)
        t.k += n
        idx = t.uints(ks, "anchor index")
        if idx.size and int(idx.max()) >= dims // 2:
            j = int(np.argmax(idx >= dims // 2))
            raise t.fail(f"anchor index {int(idx[j])} >= {dims // 2} shape points", int(ks[j]))
        if n == 0 and forests[level] and any(s for _, s, _, _ in forests[level]):
            raise t.fail("cascade level with splits but no feature pixels", start)
        anchors.append(idx.astype(np.intp))

    t.context("deltas")
    n_delta_levels = t.count_of("number of deltas levels", 1)
    if n_delta_levels != n_levels:
        raise t.fail(f"{n_delta_levels} deltas levels for {n_levels} cascade levels")
    levels: list[CascadeLevel] = []
    for level in range(n_levels):
        t.context(f"deltas[{level}]")
        start = t.k
        n = t.count_of("number of deltas", 4)
        if n != anchors[level].size:
            raise t.fail(f"{n} deltas for {anchors[level].size} anchor indices", start)
        ks = t.k + 2 * np.arange(2 * n)
        t.k += 4 * n
        deltas = t.floats(ks, "delta").reshape(n, 2)
        t.context(f"forests[{level}]")
        levels.append(_build_level(t, forests[level], anchors[level], deltas, dims))

    t.context("end of file")
    if t.k != t.count or t.end != t.size:
        raise t.fail(f"{t.size - t.offset()} unexpected trailing bytes")
    return initial, levels


def _build_level(
    t: _Tokens,
    trees: list[tuple[int, int, int, int]],
    anchors: np.ndarray,
    deltas: np.ndarray,
    dims: int,
) -> CascadeLevel:
    """Decode one level's trees (their tokens were located by the walk) into arrays."""
    n_feat = anchors.size
    depths = np.array([n.bit_length() - 1 for _, _, _, n in trees], dtype=np.int64)
    depth = int(depths.max()) if depths.size else 0
    n_split = (1 << depth) - 1
    leaf_len = 2 + 2 * dims
    groups: dict[int, list[int]] = {}
    for i, (_, s, _, _) in enumerate(trees):
        groups.setdefault(s, []).append(i)
    n_trees = len(trees)
    idx1 = np.zeros((n_trees, n_split), np.intp)
    idx2 = np.zeros((n_trees, n_split), np.intp)
    thresh = np.zeros((n_trees, n_split), np.float32)
    leaves = np.zeros((n_trees, n_split + 1, dims), np.float32)
    for s, members in groups.items():
        rows = np.array(members)
        split_k = np.array([trees[i][0] for i in members])[:, None] + 4 * np.arange(s)
        leaf_k = np.array([trees[i][2] for i in members])[:, None, None]
        leaf_k = leaf_k + leaf_len * np.arange(s + 1)[:, None] + 2 + 2 * np.arange(dims)
        i1 = t.uints(split_k, "split idx1").astype(np.int64)
        i2 = t.uints(split_k + 1, "split idx2").astype(np.int64)
        for name, arr, kk in (("idx1", i1, split_k), ("idx2", i2, split_k + 1)):
            if arr.size and int(arr.max()) >= n_feat:
                j = int(np.argmax(arr.reshape(-1) >= n_feat))
                value = int(arr.reshape(-1)[j])
                raise t.fail(
                    f"split {name} {value} >= {n_feat} feature pixels", int(kk.reshape(-1)[j])
                )
        th = t.floats(split_k + 2, "split threshold")
        lv = t.floats(leaf_k, "leaf value")
        if s == n_split:
            idx1[rows], idx2[rows], thresh[rows], leaves[rows] = i1, i2, th, lv
            continue
        for r, a, b, c, d in zip(rows, i1, i2, th, lv, strict=True):
            idx1[r], idx2[r], thresh[r], leaves[r] = _pad_tree(a, b, c, d, depth)
    return _freeze(
        CascadeLevel(
            anchor_idx=anchors,
            deltas=deltas,
            split_idx1=idx1,
            split_idx2=idx2,
            split_thresh=thresh,
            leaf_values=leaves,
            tree_depths=depths,
        )
    )


def _freeze(obj: _T) -> _T:
    """Make the numpy arrays held by a dataclass instance read-only; return it."""
    for value in vars(obj).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return obj


def read_shape_predictor(source: str | os.PathLike[str] | bytes) -> ShapePredictor:
    """Parse a dlib ``shape_predictor`` file (a path or its bytes).

    Raises :class:`DlibFormatError` (a ValueError naming the byte offset) when the file is
    truncated, corrupt, inconsistent, or has bytes left over.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, name = bytes(source), "<bytes>"
    else:
        data, name = Path(source).read_bytes(), os.fspath(source)
    initial, levels = _parse(_Tokens(data, name))
    return ShapePredictor(initial, levels)


def round_like_dlib(points: np.ndarray) -> np.ndarray:
    """Integer pixel positions as dlib makes them from doubles: ``floor(v + 0.5)``."""
    return np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)


def _box(box: Any) -> tuple[float, float, float, float]:
    if all(callable(getattr(box, n, None)) for n in ("left", "top", "right", "bottom")):
        values = (box.left(), box.top(), box.right(), box.bottom())
    else:
        values = tuple(box)
        if len(values) != 4:
            raise ValueError(f"box must be (left, top, right, bottom), got {box!r}")
    out = tuple(float(v) for v in values)
    if not all(np.isfinite(out)):
        raise ValueError(f"box must be finite, got {box!r}")
    return out  # type: ignore[return-value]


def _image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must be HxW grey or HxWx3 colour, got shape {img.shape}")
    return img


@functools.cache
def _rows_add_in_order(rows: int, cols: int) -> bool:
    """Whether ``np.add.reduce(a, axis=0)`` adds the rows of a C-ordered float32 array of this
    shape one after the other, as numpy does (pairwise summation is used only along the
    contiguous axis).

    Checked on data where the two orders differ: 1 followed by 2**-24s, which one at a time
    are each rounded away but summed in pairs first are not.
    """
    a = np.full((rows, cols), 2.0**-24, dtype=np.float32)
    a[0] = 1
    return bool((np.add.reduce(a, axis=0) == np.add.accumulate(a, axis=0)[-1]).all())


def _sum_rows(a: np.ndarray) -> np.ndarray:
    """float32 sum of the rows in order: ((a0 + a1) + a2) + ..."""
    if _rows_add_in_order(*a.shape):
        return np.add.reduce(a, axis=0)
    return np.add.accumulate(a, axis=0)[-1]


@dataclass(frozen=True)
class _LevelPlan:
    """A cascade level's arrays flattened for :meth:`ShapePredictor.predict`."""

    anchor_x: np.ndarray
    anchor_y: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    idx1: np.ndarray
    idx2: np.ndarray
    thresh: np.ndarray
    leaves: np.ndarray
    split_base: np.ndarray
    step: np.ndarray
    leaf_shift: np.ndarray
    num_trees: int
    depth: int

    @classmethod
    def of(cls, lvl: CascadeLevel, dims: int) -> _LevelPlan:
        n_split = lvl.split_idx1.shape[1]
        trees = np.arange(lvl.num_trees, dtype=np.intp)
        return cls(
            anchor_x=2 * lvl.anchor_idx.astype(np.intp),
            anchor_y=2 * lvl.anchor_idx.astype(np.intp) + 1,
            dx=np.ascontiguousarray(lvl.deltas[:, 0], dtype=np.float32),
            dy=np.ascontiguousarray(lvl.deltas[:, 1], dtype=np.float32),
            idx1=lvl.split_idx1.reshape(-1).astype(np.intp),
            idx2=lvl.split_idx2.reshape(-1).astype(np.intp),
            thresh=lvl.split_thresh.reshape(-1).astype(np.float32),
            leaves=lvl.leaf_values.reshape(-1, dims).astype(np.float32),
            split_base=trees * n_split,
            step=2 - trees * n_split,
            leaf_shift=trees - n_split,
            num_trees=lvl.num_trees,
            depth=lvl.depth,
        )


class ShapePredictor:
    """A parsed dlib shape predictor; ``predict(image, box)`` gives dlib's landmarks."""

    def __init__(self, initial_shape: np.ndarray, levels: Sequence[CascadeLevel]) -> None:
        self.initial_shape = np.array(initial_shape, dtype=np.float32).reshape(-1)
        self.levels = list(levels)
        xy = self.initial_shape.reshape(-1, 2).astype(np.float64)
        centred = xy - xy.sum(axis=0) / len(xy)
        self._initial_centred = (centred[:, 0].tolist(), centred[:, 1].tolist())
        self._initial_sigma = float((centred * centred).sum()) / len(xy)
        self._plans = [_LevelPlan.of(lvl, self.initial_shape.size) for lvl in self.levels]
        # One instance is shared by load_shape_predictor's callers: keep its arrays read-only.
        for plan in self._plans:
            _freeze(plan)
        self.initial_shape.flags.writeable = False

    @property
    def num_parts(self) -> int:
        """Number of landmarks (5 for the 5-point model)."""
        return self.initial_shape.size // 2

    @property
    def num_trees(self) -> int:
        return sum(lvl.num_trees for lvl in self.levels)

    def _similarity(self, current: np.ndarray) -> tuple[float, float, float, float]:
        """dlib's find_tform_between_shapes(initial, current).get_m() cast to float32.

        dlib solves Umeyama's problem with an SVD; in two dimensions the scaled rotation it
        finds is [[p, -q], [q, p]] / sigma_from in closed form, with p = cov00 + cov11 and
        q = cov10 - cov01 (it differs from dlib's SVD only in the last bits of a double, which
        the cast to float32 removes). Returns (m00, m01, m10, m11).
        """
        if self.num_parts == 1:
            return (1.0, 0.0, 0.0, 1.0)
        sx, sy = self._initial_centred
        cur = current.tolist()
        n = len(cur)
        mx = sum(c[0] for c in cur) / n
        my = sum(c[1] for c in cur) / n
        cxx = cxy = cyx = cyy = 0.0
        for (x, y), ax, ay in zip(cur, sx, sy, strict=True):
            dx, dy = x - mx, y - my
            cxx += dx * ax
            cxy += dx * ay
            cyx += dy * ax
            cyy += dy * ay
        p = (cxx + cyy) / n
        q = (cyx - cxy) / n
        sigma = self._initial_sigma
        if sigma != 0:
            scale = 1.0 / sigma
        else:  # dlib keeps c = 1 and only the rotation
            norm = math.hypot(p, q)
            p, q, scale = (1.0, 0.0, 1.0) if norm == 0 else (p, q, 1.0 / norm)
        m = np.array([p * scale, -q * scale, q * scale, p * scale], dtype=np.float32)
        return tuple(m)  # type: ignore[return-value]

    def predict(self, image: np.ndarray, box: Any) -> np.ndarray:
        """Landmarks (num_parts, 2) as float64 (x, y) image coordinates, as dlib computes them.

        ``image`` is HxWx3 uint8 (BGR or RGB: dlib's grey value is the channel mean either
        way) or HxW uint8 grey; ``box`` is ``(left, top, right, bottom)`` with inclusive
        corners like a ``dlib.rectangle`` (or any object with those four methods). Round with
        :func:`round_like_dlib` to get ``part(i).x`` / ``.y`` of dlib's result.
        """
        img = _image(image)
        left, top, right, bottom = _box(box)
        width, height = right - left, bottom - top
        nr, nc = img.shape[:2]
        colour = img.ndim == 3
        if nr * nc == 0:  # dlib reads every feature pixel of an empty image as 0
            img = np.zeros((1, 1, *img.shape[2:]), np.uint8)
            nr = nc = 0
        # C-ordered images are read through a flat view, others by (row, column) indexing.
        flat_img = img.reshape(max(nr * nc, 1), -1) if img.flags.c_contiguous else None
        shape = self.initial_shape.copy()
        for plan in self._plans:
            if plan.num_trees == 0:
                continue
            m00, m01, m10, m11 = self._similarity(shape.reshape(-1, 2))
            # float32, in dlib's order: (m00*dx + m01*dy) + anchor_x; then float64 to the image.
            fx = (m00 * plan.dx + m01 * plan.dy) + shape.take(plan.anchor_x)
            fy = (m10 * plan.dx + m11 * plan.dy) + shape.take(plan.anchor_y)
            px = np.floor(fx.astype(np.float64) * width + left + 0.5)
            py = np.floor(fy.astype(np.float64) * height + top + 0.5)
            inside = (px >= 0) & (px <= nc - 1) & (py >= 0) & (py <= nr - 1)
            at = np.where(inside, py * nc + px, 0).astype(np.intp)
            if flat_img is not None:
                pixels = flat_img.take(at, axis=0)
            else:
                pixels = img[at // nc, at % nc].reshape(at.size, -1)
            if colour:  # dlib's rgb -> unsigned char: the integer mean, rounded down
                grey = (pixels[:, 0].astype(np.uint16) + pixels[:, 1] + pixels[:, 2]) // 3
            else:
                grey = pixels[:, 0]
            values = (grey * inside).astype(np.float32)  # outside the image: 0
            # Every split of every tree at once, then the walks from the roots.
            go_left = (values.take(plan.idx1) - values.take(plan.idx2)) > plan.thresh
            # pos = tree * n_split + node; from node i the walk goes to 2i + 2 - go_left[i].
            pos = plan.split_base.copy()
            for _ in range(plan.depth):
                turn = go_left.take(pos)
                pos *= 2
                pos += plan.step
                pos -= turn
            steps = plan.leaves.take(pos + plan.leaf_shift, axis=0)
            # float32 sums in tree order, as dlib adds one leaf vector after the other.
            steps[0] += shape
            shape = _sum_rows(steps)
        xy = shape.reshape(-1, 2).astype(np.float64)
        return np.stack([xy[:, 0] * width + left, xy[:, 1] * height + top], axis=1)

    __call__ = predict


def default_model_path() -> Path:
    """``shape_predictor_5_face_landmarks.dat`` from the face_recognition_models package."""
    from importlib.resources import files

    return Path(str(files("face_recognition_models") / "models" / MODEL_FILE))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> ShapePredictor:
    return read_shape_predictor(path)


def load_shape_predictor(path: str | os.PathLike[str] | None = None) -> ShapePredictor:
    """The shape predictor at ``path`` (default: the 5-point model), parsed once and cached.

    The cache is keyed by the resolved path, size and modification time; callers share one
    read-only instance.
    """
    target = Path(path) if path is not None else default_model_path()
    target = target.resolve()
    st = target.stat()
    return _load_cached(str(target), st.st_mtime_ns, st.st_size)
