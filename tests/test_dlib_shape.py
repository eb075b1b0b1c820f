"""dlib_shape: dlib's shape_predictor file reader and its numpy predictor.

The parsing tests use the 5-point model from face_recognition_models and small synthetic
models written here in dlib's serialisation. The equivalence tests run dlib itself on real
faces from ``../shared/data`` and skip cleanly when dlib or the data are not there.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gate.recognition.nn.dlib_shape import (
    DlibFormatError,
    ShapePredictor,
    default_model_path,
    load_shape_predictor,
    read_shape_predictor,
    round_like_dlib,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data"
MIN_FACES = 200
LFW_STEP = 25  # every 25th LFW image (about 200 images of 250x250)
MAX_SIDE = 640  # larger photos are shrunk before detection (only to save time)


# ---------------------------------------------------------------------------------------------
# dlib's serialisation, written independently of the reader (dlib/serialize.h pack_int and
# dlib/float_details.h), to rebuild the model file and to make synthetic ones.


def pack_ints(values: np.ndarray) -> bytes:
    """dlib's integer encoding of every value: control byte (sign, length) then the bytes."""
    v = np.asarray(values, dtype=np.int64)
    neg = v < 0
    mag = np.where(neg, -v, v).astype(np.uint64)
    size = np.ones(v.size, dtype=np.int64)
    for k in range(1, 8):
        size += mag >= np.uint64(1 << (8 * k))
    table = np.zeros((v.size, 9), dtype=np.uint8)
    table[:, 0] = size | np.where(neg, 0x80, 0)
    table[:, 1:] = mag.astype("<u8").view(np.uint8).reshape(-1, 8)
    return table[np.arange(9)[None, :] <= size[:, None]].tobytes()


def float_tokens(values: np.ndarray) -> np.ndarray:
    """float32 values as dlib's (mantissa, exponent) pairs, flattened."""
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    finite = np.isfinite(x)
    frac, exp = np.frexp(np.where(finite, x, 0))
    mantissa = (frac.astype(np.float64) * (1 << 24)).astype(np.int64)
    exponent = exp.astype(np.int64) - 24
    for _ in range(8):  # dlib shifts off low-order zero bytes of the mantissa
        zero = (mantissa & 0xFF) == 0
        mantissa = np.where(zero, mantissa >> 8, mantissa)
        exponent = np.where(zero, exponent + 8, exponent)
    special = np.where(np.isnan(x), 32002, np.where(x > 0, 32000, 32001))  # nan, inf, -inf
    mantissa = np.where(finite, mantissa, 0)
    exponent = np.where(finite, exponent, special)
    return np.stack([mantissa, exponent], axis=1).reshape(-1)


Tree = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # idx1, idx2, thresh, leaves


def model_tokens(
    initial: np.ndarray,
    forests: Sequence[Sequence[Tree]],
    anchors: Sequence[np.ndarray],
    deltas: Sequence[np.ndarray],
) -> np.ndarray:
    """The integer tokens of a serialised dlib::shape_predictor."""
    dims = initial.size
    parts: list[Any] = [[1, -dims, -1], float_tokens(initial), [len(forests)]]
    for trees in forests:
        parts.append([len(trees)])
        for idx1, idx2, thresh, leaves in trees:
            splits = np.stack([idx1, idx2], axis=1).astype(np.int64)
            th = float_tokens(thresh).reshape(-1, 2)
            parts += [[len(idx1)], np.concatenate([splits, th], axis=1).reshape(-1)]
            head = np.tile([-leaves.shape[1], -1], (len(leaves), 1))
            body = float_tokens(leaves).reshape(len(leaves), -1)
            parts += [[len(leaves)], np.concatenate([head, body], axis=1).reshape(-1)]
    parts.append([len(anchors)])
    for a in anchors:
        parts += [[len(a)], np.asarray(a, dtype=np.int64)]
    parts.append([len(deltas)])
    for d in deltas:
        parts += [[len(d)], float_tokens(d)]
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def encode_predictor(sp: ShapePredictor) -> bytes:
    """Serialise a parsed predictor again (its trees must not have been padded)."""
    forests = []
    for lvl in sp.levels:
        assert (lvl.tree_depths == lvl.depth).all()
        forests.append(
            list(
                zip(lvl.split_idx1, lvl.split_idx2, lvl.split_thresh, lvl.leaf_values, strict=True)
            )
        )
    anchors = [lvl.anchor_idx for lvl in sp.levels]
    deltas = [lvl.deltas for lvl in sp.levels]
    return pack_ints(model_tokens(sp.initial_shape, forests, anchors, deltas))


def random_tree(rng: np.random.Generator, depth: int, n_feat: int, dims: int) -> Tree:
    """A tree with integer thresholds (pixel differences often equal them: the tie case)."""
    n_split = (1 << depth) - 1
    return (
        rng.integers(0, n_feat, n_split),
        rng.integers(0, n_feat, n_split),
        rng.integers(-12, 12, n_split).astype(np.float32),
        (rng.standard_normal((n_split + 1, dims)) * 0.01).astype(np.float32),
    )


def synthetic_model(
    sp: ShapePredictor, seed: int = 0, levels: int = 3, trees: int = 40
) -> dict[str, Any]:
    """Pieces of a small model on the real model's initial shape and feature pixels, with
    trees of mixed depth 0..4."""
    rng = np.random.default_rng(seed)
    dims = sp.initial_shape.size
    forests, anchors, deltas = [], [], []
    for lvl in sp.levels[:levels]:
        n_feat = lvl.anchor_idx.size
        forests.append(
            [random_tree(rng, int(rng.integers(0, 5)), n_feat, dims) for _ in range(trees)]
        )
        anchors.append(lvl.anchor_idx)
        deltas.append(lvl.deltas)
    return {"initial": sp.initial_shape, "forests": forests, "anchors": anchors, "deltas": deltas}


def encode(model: dict[str, Any]) -> bytes:
    return pack_ints(
        model_tokens(model["initial"], model["forests"], model["anchors"], model["deltas"])
    )


def token_starts(data: bytes, count: int) -> list[int]:
    """Byte offsets of the first ``count`` integers of a dlib stream."""
    out, pos = [], 0
    for _ in range(count):
        out.append(pos)
        pos += 1 + (data[pos] & 0x0F)
    return out


def reference_predict(model: dict[str, Any], grey: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """A literal, tree-by-tree transcription of dlib's shape_predictor::operator()."""
    left, top, right, bottom = (float(v) for v in box)
    shape = model["initial"].astype(np.float32).copy()
    init = shape.reshape(-1, 2).astype(np.float64)
    for trees, anchor, delta in zip(
        model["forests"], model["anchors"], model["deltas"], strict=True
    ):
        cur = shape.reshape(-1, 2).astype(np.float64)
        src, dst = init - init.mean(0), cur - cur.mean(0)
        u, d, vt = np.linalg.svd(dst.T @ src / len(src))
        s = np.eye(2)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            s[1, 1] = -1
        m = ((d * np.diag(s)).sum() / (src**2).sum(1).mean() * (u @ s @ vt)).astype(np.float32)
        values = np.zeros(len(anchor), np.float32)
        for i, (a, (dx, dy)) in enumerate(zip(anchor, delta, strict=True)):
            fx = np.float32(m[0, 0] * dx + m[0, 1] * dy) + shape[2 * a]
            fy = np.float32(m[1, 0] * dx + m[1, 1] * dy) + shape[2 * a + 1]
            x = math.floor(float(fx) * (right - left) + left + 0.5)
            y = math.floor(float(fy) * (bottom - top) + top + 0.5)
            if 0 <= x < grey.shape[1] and 0 <= y < grey.shape[0]:
                values[i] = grey[y, x]
        for idx1, idx2, thresh, leaves in trees:
            node = 0
            while node < len(idx1):
                diff = values[idx1[node]] - values[idx2[node]]
                node = 2 * node + 1 if diff > thresh[node] else 2 * node + 2
            shape = (shape + leaves[node - len(idx1)]).astype(np.float32)
    xy = shape.reshape(-1, 2).astype(np.float64)
    return np.stack([xy[:, 0] * (right - left) + left, xy[:, 1] * (bottom - top) + top], 1)


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        path = default_model_path()
    except ModuleNotFoundError:
        pytest.skip("face_recognition_models is not installed")
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def model_bytes(model_path: Path) -> bytes:
    return model_path.read_bytes()


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> ShapePredictor:
    return load_shape_predictor(model_path)


@pytest.fixture(scope="module")
def dlib_mod() -> Any:
    return pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def dlib_predictor(dlib_mod: Any, model_path: Path) -> Any:
    return dlib_mod.shape_predictor(str(model_path))


def _images() -> list[Path]:
    lfw = sorted((DATA / "lfw-view1" / "images").glob("*/*.jpg"))[::LFW_STEP]
    others = [
        p
        for folder in ("people/face_recognition", "people/bbt", "multi")
        for p in sorted((DATA / folder).rglob("*"))
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    return lfw + others


@pytest.fixture(scope="module")
def faces(dlib_mod: Any) -> list[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """(name, BGR image, HOG box) for every face dlib's HOG detector finds in the sample."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not available: {DATA}")
    cv2 = pytest.importorskip("cv2")
    detector = dlib_mod.get_frontal_face_detector()
    out = []
    for path in _images():
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        if max(bgr.shape[:2]) > MAX_SIDE:
            scale = MAX_SIDE / max(bgr.shape[:2])
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        for r in detector(rgb, 1):
            out.append((path.name, bgr, (r.left(), r.top(), r.right(), r.bottom())))
    if len(out) < MIN_FACES:
        pytest.skip(f"only {len(out)} faces found in {DATA}")
    return out


def _dlib_points(dlib_mod: Any, dsp: Any, image: np.ndarray, box: Sequence[int]) -> np.ndarray:
    det = dsp(image, dlib_mod.rectangle(*(int(v) for v in box)))
    return np.array([(det.part(i).x, det.part(i).y) for i in range(det.num_parts)])


def _boxes(
    box: tuple[int, int, int, int], shape: tuple[int, ...], rng: np.random.Generator
) -> Iterator[tuple[str, tuple[int, int, int, int]]]:
    """The detector's box, random shifts and scalings of it, and boxes partly off the image."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    height, width = shape[:2]
    yield "hog", box
    for _ in range(2):
        s = rng.uniform(0.6, 1.6)
        cx = (left + right) / 2 + rng.uniform(-0.35, 0.35) * w
        cy = (top + bottom) / 2 + rng.uniform(-0.35, 0.35) * h
        hw, hh = s * w / 2, s * h / 2 * rng.uniform(0.8, 1.25)
        yield "jitter", (round(cx - hw), round(cy - hh), round(cx + hw), round(cy + hh))
    # partly outside: 2.5 times the face box (past the borders of the LFW crops), and boxes
    # over the top-left and bottom-right corners of the image
    cx, cy = (left + right) // 2, (top + bottom) // 2
    yield "outside", (cx - 5 * w // 4, cy - 5 * h // 4, cx + 5 * w // 4, cy + 5 * h // 4)
    yield "outside", (-w // 2, -h // 3, w // 2, 2 * h // 3)
    yield "outside", (width - w // 2, height - h // 2, width + w // 2, height + h // 2)


# ---------------------------------------------------------------------------------------------
# (a) Strict parsing.


def test_parses_the_5_point_model(predictor: ShapePredictor) -> None:
    sp = predictor
    assert sp.num_parts == 5 and sp.initial_shape.shape == (10,)
    assert sp.initial_shape.dtype == np.float32
    assert len(sp.levels) == 15 and sp.num_trees == 15 * 500
    for lvl in sp.levels:
        assert lvl.anchor_idx.shape == (800,) and lvl.deltas.shape == (800, 2)
        assert lvl.split_idx1.shape == lvl.split_idx2.shape == lvl.split_thresh.shape == (500, 15)
        assert lvl.leaf_values.shape == (500, 16, 10) and lvl.leaf_values.dtype == np.float32
        assert lvl.depth == 4 and (lvl.tree_depths == 4).all()
        assert lvl.anchor_idx.max() < 5
        assert max(lvl.split_idx1.max(), lvl.split_idx2.max()) < 800
        assert np.isfinite(lvl.split_thresh).all() and np.isfinite(lvl.leaf_values).all()


def test_every_byte_is_accounted_for(predictor: ShapePredictor, model_bytes: bytes) -> None:
    """Writing the parsed model back in dlib's format gives the file, byte for byte."""
    assert encode_predictor(predictor) == model_bytes


def test_loader_is_cached(model_path: Path) -> None:
    assert load_shape_predictor() is load_shape_predictor(model_path)


@pytest.mark.parametrize("cut", [0, 1, 5, 1000, 1001, 4_000_000, -1])
def test_truncated_file_raises(model_bytes: bytes, cut: int) -> None:
    data = model_bytes[:cut]
    with pytest.raises(ValueError, match=r"byte offset \d+") as info:
        read_shape_predictor(data)
    offset = int(str(info.value).split("byte offset ")[1].split()[0])
    assert offset <= len(data)


def test_bad_control_byte_is_located(model_bytes: bytes) -> None:
    start = token_starts(model_bytes, 500_000)[-1]
    data = bytearray(model_bytes)
    data[start] = 0x0F  # a length of 15 bytes: not a dlib integer
    with pytest.raises(DlibFormatError, match=f"byte offset {start} "):
        read_shape_predictor(bytes(data))
    data[start] = 0x00
    with pytest.raises(DlibFormatError, match=f"byte offset {start} "):
        read_shape_predictor(bytes(data))


def test_trailing_bytes_and_bad_version(model_bytes: bytes) -> None:
    with pytest.raises(DlibFormatError, match="trailing"):
        read_shape_predictor(model_bytes + b"\x01\x00")
    with pytest.raises(DlibFormatError, match="version"):
        read_shape_predictor(b"\x01\x02" + model_bytes[2:])
    with pytest.raises(DlibFormatError, match="byte offset 2 "):
        read_shape_predictor(model_bytes[:2] + b"\x81\x0b" + model_bytes[4:])  # 11 values


@pytest.fixture(scope="module")
def small(predictor: ShapePredictor) -> dict[str, Any]:
    return synthetic_model(predictor)


def test_synthetic_model_round_trips(small: dict[str, Any]) -> None:
    sp = read_shape_predictor(encode(small))
    assert len(sp.levels) == 3 and sp.num_trees == 120
    for lvl, trees in zip(sp.levels, small["forests"], strict=True):
        assert lvl.tree_depths.tolist() == [len(t[3]).bit_length() - 1 for t in trees]


def _corrupt(small: dict[str, Any], change: str) -> dict[str, Any]:
    m = {k: (list(v) if isinstance(v, list) else v) for k, v in small.items()}
    m["forests"] = [list(trees) for trees in small["forests"]]
    j = next(i for i, tree in enumerate(m["forests"][1]) if len(tree[0]) > 0)
    idx1, idx2, thresh, leaves = m["forests"][1][j]
    if change == "split index":
        m["forests"][1][j] = (idx1 * 0 + 800, idx2, thresh, leaves)
    elif change == "leaf count":
        m["forests"][1][j] = (idx1, idx2, thresh, np.concatenate([leaves, leaves[:1]]))
    elif change == "leaf size":
        m["forests"][1][j] = (idx1, idx2, thresh, leaves[:, :8])
    elif change == "threshold":
        m["forests"][1][j] = (idx1, idx2, thresh + np.float32(np.inf), leaves)
    elif change == "anchor":
        m["anchors"][2] = np.where(np.arange(800) == 7, 5, m["anchors"][2])
    elif change == "deltas":
        m["deltas"][0] = m["deltas"][0][:-1]
    elif change == "levels":
        m["anchors"] = m["anchors"][:2]
    return m


@pytest.mark.parametrize(
    "change", ["split index", "leaf count", "leaf size", "threshold", "anchor", "deltas", "levels"]
)
def test_inconsistent_model_raises(small: dict[str, Any], change: str) -> None:
    data = encode(_corrupt(small, change))
    with pytest.raises(DlibFormatError, match=r"shape_predictor file at byte offset \d+"):
        read_shape_predictor(data)


# ---------------------------------------------------------------------------------------------
# (c) Odd inputs.


def test_odd_images_and_boxes(predictor: ShapePredictor) -> None:
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    cases = [
        (colour, (10, 5, 50, 45)),
        (grey, (10, 5, 50, 45)),
        (grey[:, :, None], (10, 5, 50, 45)),
        (np.full((1, 1, 3), 128, np.uint8), (0, 0, 0, 0)),
        (np.full((1, 1), 7, np.uint8), (-20, -20, 30, 30)),
        (np.zeros((0, 0, 3), np.uint8), (0, 0, 40, 40)),
        (colour, (1000, 1000, 1100, 1100)),  # entirely outside
        (colour, (-300, -300, -200, -200)),
        (colour[:, ::-1], (10, 5, 50, 45)),  # not contiguous
    ]
    for image, box in cases:
        pts = predictor.predict(image, box)
        assert pts.shape == (5, 2) and pts.dtype == np.float64 and np.isfinite(pts).all()
    # With no pixel inside, every feature reads 0: the same points wherever the box is.
    a = predictor.predict(colour, (1000, 1000, 1100, 1100)) - 1000
    b = predictor.predict(grey, (-300, -300, -200, -200)) + 300
    np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        predictor.predict(colour.astype(np.float32), (0, 0, 10, 10))
    with pytest.raises(ValueError):
        predictor.predict(np.zeros((4, 4, 4), np.uint8), (0, 0, 10, 10))
    with pytest.raises(ValueError):
        predictor.predict(colour, (0, 0, 10))


def test_odd_inputs_match_dlib(
    predictor: ShapePredictor, dlib_mod: Any, dlib_predictor: Any
) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    cases = [
        (rgb, (10, 5, 50, 45)),
        (grey, (10, 5, 50, 45)),
        (np.full((1, 1, 3), 200, np.uint8), (0, 0, 100, 100)),
        (np.full((1, 1), 9, np.uint8), (-20, -20, 30, 30)),
        (rgb, (1000, 1000, 1100, 1100)),
        (rgb, (-300, -300, -200, -200)),
        (rgb, (30, 20, 30, 20)),
    ]
    for image, box in cases:
        ours = round_like_dlib(
            predictor.predict(image[..., ::-1] if image.ndim == 3 else image, box)
        )
        np.testing.assert_array_equal(ours, _dlib_points(dlib_mod, dlib_predictor, image, box))


def test_module_does_not_import_dlib(model_path: Path) -> None:
    code = (
        "import sys; sys.modules['dlib'] = None\n"
        "import numpy as np\n"
        "from gate.recognition.nn.dlib_shape import read_shape_predictor\n"
        f"sp = read_shape_predictor({str(model_path)!r})\n"
        "print(sp.predict(np.zeros((20, 20, 3), np.uint8), (2, 2, 17, 17)).shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(5, 2)"


# ---------------------------------------------------------------------------------------------
# (b) Equivalence with dlib on real faces.


def test_same_points_as_dlib_on_real_faces(
    predictor: ShapePredictor, faces: list, dlib_mod: Any, dlib_predictor: Any
) -> None:
    rng = np.random.default_rng(0)
    stats: dict[str, list[int]] = {}
    max_dev = 0.0
    mismatches = []
    for i, (name, bgr, hog_box) in enumerate(faces):
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        for kind, box in _boxes(hog_box, bgr.shape, rng):
            runs = [(kind, bgr, rgb)]
            if kind == "hog" and i % 3 == 0:
                grey = (rgb.sum(axis=2) // 3).astype(np.uint8)
                runs.append(("grey", grey, grey))
            for label, ours_img, dlib_img in runs:
                ours = predictor.predict(ours_img, box)
                ref = _dlib_points(dlib_mod, dlib_predictor, dlib_img, box)
                same = (round_like_dlib(ours) == ref).all(axis=1)
                counts = stats.setdefault(label, [0, 0])
                counts[0] += int(same.sum())
                counts[1] += same.size
                max_dev = max(max_dev, float(np.abs(ours - ref).max()))
                if not same.all():
                    mismatches.append((name, label, box, ours.round(2).tolist(), ref.tolist()))
    total = sum(c[1] for c in stats.values())
    exact = sum(c[0] for c in stats.values())
    summary = ", ".join(f"{k}: {c[0]}/{c[1]}" for k, c in stats.items())
    print(
        f"\n{len(faces)} faces, {total} points, exact {exact / total:.5f} ({summary}); "
        f"max |unrounded - dlib| = {max_dev:.6f} px"
    )
    assert len(faces) >= MIN_FACES
    assert exact >= total - max(1, total // 1000), mismatches[:5]


def test_synthetic_trees_match_dlib_and_reference(
    predictor: ShapePredictor, small: dict[str, Any], faces: list, dlib_mod: Any, tmp_path: Path
) -> None:
    """Mixed tree depths (padded here) and integer thresholds (ties) behave as in dlib."""
    path = tmp_path / "small.dat"
    path.write_bytes(encode(small))
    ours_sp = read_shape_predictor(path)
    dsp = dlib_mod.shape_predictor(str(path))
    checked = 0
    for _, bgr, box in faces[::10]:
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        ours = ours_sp.predict(bgr, box)
        np.testing.assert_array_equal(round_like_dlib(ours), _dlib_points(dlib_mod, dsp, rgb, box))
        grey = (rgb.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
        ref = reference_predict(small, grey, box)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
        checked += 1
    assert checked >= 20
