"""gate.recognition.nn: dlib's DNN file reader and the torch port of its face-recognition ResNet.

The equivalence test runs dlib itself on real faces from ``../shared/data`` and skips cleanly
when dlib or the data are not there.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gate.recognition.nn.dlib_format import DlibFormatError, read_dlib_net
from gate.recognition.nn.dlib_resnet import (
    MATCH_THRESHOLD,
    DlibResNet,
    cache_file,
    chips_to_tensor,
    convert_dlib_net,
    default_model_path,
    dlib_resnet_state_dict,
    encode_chips,
    load_dlib_resnet,
    load_state_strict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT.parent / "shared" / "data"
LFW_PEOPLE = 22  # LFW names with at least 4 images, 4 images each
MAX_SIDE = 480  # large photos are shrunk before detection (only to save time)


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
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate-cache")


@pytest.fixture(scope="module")
def model(model_path: Path, cache_dir: Path) -> DlibResNet:
    return load_dlib_resnet(model_path, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------
# Reader and strict conversion.


def test_reader_parses_the_whole_file(model_path: Path) -> None:
    net = read_dlib_net(model_path)
    assert net.input.version == "input_rgb_image_sized"
    assert (net.input.attrs["nr"], net.input.attrs["nc"]) == (150, 150)
    assert net.input.attrs["avg_red"] == pytest.approx(122.782, abs=1e-4)
    assert net.loss.version == "loss_metric_2"
    assert net.loss.attrs["dist_thresh"] == pytest.approx(0.6)
    kinds = [r.kind for r in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29
    assert kinds.count("fc") == 1 and kinds[-1] == "fc"
    assert net.layers[-1].tensors["weight"].shape == (256, 128)
    assert all(a.dtype == np.float32 for r in net.layers for a in r.tensors.values())
    assert net.parameter_count() == 5_614_592


def test_strict_load_uses_every_tensor_once(model_path: Path) -> None:
    net = read_dlib_net(model_path)
    state = convert_dlib_net(net)
    n_file = sum(len(r.tensors) for r in net.layers)
    assert len(state) == n_file + 1  # + the input mean taken from the input layer
    assert sum(t.numel() for k, t in state.items() if k != "input_mean") == net.parameter_count()
    module = DlibResNet()
    assert set(state) == set(module.state_dict())
    load_state_strict(module, state)

    missing = dict(state)
    del missing["blocks.3.conv1.bias"]
    with pytest.raises(ValueError, match="missing"):
        load_state_strict(DlibResNet(), missing)
    extra = {**state, "blocks.3.conv1.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected"):
        load_state_strict(DlibResNet(), extra)

    # A file tensor the architecture has no place for is an error, not silently dropped ...
    net.layers[2].tensors["stray"] = np.zeros(3, np.float32)  # layer 2 is a relu
    with pytest.raises(ValueError, match=r"layer 2 .*unexpected parameters \['stray'\]"):
        convert_dlib_net(net)
    del net.layers[2].tensors["stray"]
    # ... and so is a missing one.
    del net.layers[0].tensors["bias"]
    with pytest.raises(ValueError, match=r"layer 0 .*missing parameter tensor 'bias'"):
        convert_dlib_net(net)


def test_output_shape_and_dtype(model: DlibResNet) -> None:
    x = torch.randint(0, 256, (3, 3, 150, 150), dtype=torch.uint8)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (3, 128) and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_fusion_and_layout_do_not_change_the_output(model_path: Path, cache_dir: Path) -> None:
    x = chips_to_tensor(np.random.default_rng(0).integers(0, 256, (4, 150, 150, 3), np.uint8))
    plain = load_dlib_resnet(model_path, cache_dir=cache_dir, fuse=False, channels_last=False)
    fast = load_dlib_resnet(model_path, cache_dir=cache_dir)
    with torch.inference_mode():
        assert torch.allclose(plain(x), fast(x), atol=1e-5, rtol=0)


def test_chips_to_tensor() -> None:
    chip = np.zeros((150, 150, 3), np.uint8)
    chip[0, 1] = (1, 2, 3)
    t = chips_to_tensor(chip)
    assert t.shape == (1, 3, 150, 150) and t.dtype == torch.float32
    assert t[0, :, 0, 1].tolist() == [1.0, 2.0, 3.0]
    assert chips_to_tensor([chip, chip]).shape == (2, 3, 150, 150)
    assert chips_to_tensor(np.zeros((150, 150), np.uint8)).shape == (1, 3, 150, 150)
    with pytest.raises(ValueError, match="150x150x3 uint8"):
        chips_to_tensor([np.zeros((112, 112, 3), np.uint8)])
    with pytest.raises(ValueError, match="150x150x3 uint8"):
        chips_to_tensor([chip.astype(np.float32)])


# ---------------------------------------------------------------------------------------------
# Corrupt files and the cache.


def test_truncated_file_gives_a_clear_error(model_path: Path, tmp_path: Path) -> None:
    data = model_path.read_bytes()
    for cut in (0, 7, 300, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.dat"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"byte offset \d+"):
            read_dlib_net(bad)
    with pytest.raises(DlibFormatError, match="trailing bytes"):
        read_dlib_net(data + b"\0")
    garbage = bytearray(data)
    at = read_dlib_net(data).layers[1].offset  # the first affine layer: "\x01\x07affine_"
    garbage[at : at + 9] = b"\x01\x07bogus__"
    with pytest.raises(DlibFormatError, match=r"layer 1 .*bogus"):
        read_dlib_net(bytes(garbage))
    # The loader reports the same error and leaves no cache file behind.
    bad = tmp_path / "cut_half.dat"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unexpected end of file"):
        load_dlib_resnet(bad, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_cache_is_keyed_by_sha256(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATE_CACHE_DIR", str(tmp_path / "env-cache"))
    src = tmp_path / "model.dat"
    shutil.copyfile(model_path, src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()

    first = dlib_resnet_state_dict(src)
    cached = tmp_path / "env-cache" / f"dlib_resnet_{sha}.pt"
    assert cached.is_file() and cache_file(src) == cached
    stamp = cached.stat().st_mtime_ns
    again = dlib_resnet_state_dict(src)
    assert cached.stat().st_mtime_ns == stamp  # served from the cache, not rewritten
    assert all(torch.equal(first[k], again[k]) for k in first)

    # A corrupt cache file is rebuilt, not fatal.
    cached.write_bytes(b"not a torch file")
    rebuilt = dlib_resnet_state_dict(src)
    assert torch.equal(rebuilt["fc.weight"], first["fc.weight"])
    assert cached.stat().st_size > 1_000_000

    # A changed .dat (one weight's lowest mantissa bit) gets its own cache entry.
    net = read_dlib_net(src)
    offset = net.layers[5].offset + 200  # inside blocks.0.conv1.weight's float data
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    src.write_bytes(bytes(data))
    new_sha = hashlib.sha256(bytes(data)).hexdigest()
    changed = dlib_resnet_state_dict(src)
    assert (tmp_path / "env-cache" / f"dlib_resnet_{new_sha}.pt").is_file()
    assert not torch.equal(changed["blocks.0.conv1.weight"], first["blocks.0.conv1.weight"])
    assert len(list((tmp_path / "env-cache").glob("dlib_resnet_*.pt"))) == 2

    # An explicit cache_dir wins over the environment.
    dlib_resnet_state_dict(src, cache_dir=tmp_path / "arg-cache")
    assert (tmp_path / "arg-cache" / f"dlib_resnet_{new_sha}.pt").is_file()


# ---------------------------------------------------------------------------------------------
# Equivalence with dlib on real faces.


def _image_paths() -> list[tuple[str, Path]]:
    """(identity, image) pairs: LFW View 1 people with >= 4 images, then all people/ sets."""
    lfw = DATA / "lfw-view1" / "images"
    out: list[tuple[str, Path]] = []
    names = [d for d in sorted(lfw.iterdir()) if len(list(d.glob("*.jpg"))) >= 4]
    for d in names[:LFW_PEOPLE]:
        out += [(f"lfw/{d.name}", p) for p in sorted(d.glob("*.jpg"))[:4]]
    for d in sorted((DATA / "people").glob("*/*")):
        if d.is_dir():
            out += [(f"{d.parent.name}/{d.name}", p) for p in sorted(d.iterdir()) if p.is_file()]
    return out


@pytest.fixture(scope="module")
def dlib_faces(model_path: Path):
    dlib = pytest.importorskip("dlib")
    if not (DATA / "lfw-view1" / "images").is_dir() or not (DATA / "people").is_dir():
        pytest.skip(f"face data not found at {DATA}")
    import cv2

    models = model_path.parent
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    chips, labels = [], []
    for label, path in _image_paths():
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        scale = MAX_SIDE / max(bgr.shape[:2])
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        boxes = detector(rgb, 1)
        if not boxes:
            continue
        box = max(boxes, key=lambda r: r.area())
        chips.append(dlib.get_face_chip(rgb, predictor(rgb, box), size=150, padding=0.25))
        labels.append(label)
    recogniser = dlib.face_recognition_model_v1(str(model_path))
    reference = np.array(recogniser.compute_face_descriptor(chips), dtype=np.float64)
    return chips, labels, reference


@pytest.mark.slow
def test_matches_dlib_on_real_faces(dlib_faces, model: DlibResNet) -> None:
    chips, labels, reference = dlib_faces
    assert len(chips) >= 200, f"only {len(chips)} faces found"
    assert reference.shape == (len(chips), 128)

    ours = encode_chips(model, chips, batch_size=16).astype(np.float64)
    assert np.abs(ours - reference).max() < 1e-3

    # Same / different decision at the 0.6 threshold on every pair of faces.
    i, j = np.triu_indices(len(chips), k=1)
    d_ref = np.linalg.norm(reference[i] - reference[j], axis=1)
    d_ours = np.linalg.norm(ours[i] - ours[j], axis=1)
    assert np.abs(d_ours - d_ref).max() < 1e-3
    assert np.array_equal(d_ref < MATCH_THRESHOLD, d_ours < MATCH_THRESHOLD)

    # Sanity: the descriptors behave like face descriptors on these labelled sets.
    same = np.array([labels[a] == labels[b] for a, b in zip(i, j, strict=True)])
    accuracy = np.mean((d_ref < MATCH_THRESHOLD) == same)
    assert accuracy > 0.95
    assert len(set(labels)) > 40
