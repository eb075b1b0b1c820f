"""LFW pair files: both layouts from small files, malformed input, and the real View 1 lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gate.recognition.lfw import Pair, PairSet, image_path, read_pairs, unique_images

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIEW1 = DATA / "lfw-view1"


def write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- View 2


def test_view2_folds_tabs_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    text = (
        "2\t1\r\n"
        "Alice_A\t1\t2\r\n"  # fold 0, matched
        "Alice_A 1   Bob_B 3\r\n"  # fold 0, mismatched (spaces)
        "Carol_C\t10\t12\r\n"  # fold 1, matched
        "Carol_C\t2\tDave_D\t4\r\n"  # fold 1, mismatched
        "\r\n\r\n"
    )
    pairs = read_pairs(write(tmp_path, text))
    assert isinstance(pairs, PairSet)
    assert pairs.folds == 2 and len(pairs) == 4
    assert pairs.pairs == [
        Pair("Alice_A", 1, "Alice_A", 2, True, 0),
        Pair("Alice_A", 1, "Bob_B", 3, False, 0),
        Pair("Carol_C", 10, "Carol_C", 12, True, 1),
        Pair("Carol_C", 2, "Dave_D", 4, False, 1),
    ]
    np.testing.assert_array_equal(pairs.same, [True, False, True, False])
    np.testing.assert_array_equal(pairs.fold_labels, [0, 0, 1, 1])
    assert list(pairs) == pairs.pairs


# --------------------------------------------------------------------------- View 1


def test_view1_single_fold(tmp_path: Path) -> None:
    text = "2\nA 1 2\nB 3 4\nA 1 C 1\nB 2 D 5\n\n"
    pairs = read_pairs(write(tmp_path, text, "pairsDevTrain.txt"))
    assert pairs.folds == 1
    assert [p.same for p in pairs] == [True, True, False, False]
    assert {p.fold for p in pairs} == {0}
    assert pairs.pairs[3] == Pair("B", 2, "D", 5, False, 0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2\nA 1 2\nB 3 4\nA 1 C 1\n", r"announces 1 fold\(s\) of 2 .* has 3 pair lines"),
        ("1 1\nA 1 2\nA 1 C 1\nB 1 2\n", "has 3 pair lines"),
        ("1\nA 1 C 2\nA 1 C 1\n", r"line 2: expected a matched pair"),
        ("1\nA 1 2\nA 1 2\n", r"line 3: expected a mismatched pair"),
        ("1\nA 1 x\nA 1 C 1\n", r"line 2: image index must be an integer, got 'x'"),
        ("1\nA 1 0\nA 1 C 1\n", r"line 2: image index must be at least 1"),
        ("1\nA 1 2\nA 1 A 3\n", r"line 3: mismatched pair names the same person"),
        ("2\nA 1 2\n\nA 1 C 1\nB 1 D 1\n", r"line 3: expected a matched pair"),
        ("one\nA 1 2\nA 1 C 1\n", r"line 1: pair count must be an integer"),
        ("1 2 3\n", r"line 1: header must be"),
        ("\n\n", "empty pair file"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text, "bad.txt")
    with pytest.raises(ValueError, match=message) as info:
        read_pairs(path)
    assert "bad.txt" in str(info.value)


# --------------------------------------------------------------------------- paths


def test_paths_use_the_lfw_layout(tmp_path: Path) -> None:
    pair = Pair("George_W_Bush", 7, "Tony_Blair", 123, False, 0)
    first, second = pair.paths(tmp_path)
    assert first == tmp_path / "George_W_Bush" / "George_W_Bush_0007.jpg"
    assert second == tmp_path / "Tony_Blair" / "Tony_Blair_0123.jpg"
    assert image_path("root", "A_B", 1) == Path("root/A_B/A_B_0001.jpg")


def test_unique_images_sorted_and_deduplicated(tmp_path: Path) -> None:
    pairs = [
        Pair("B", 1, "B", 2, True, 0),
        Pair("A", 1, "B", 1, False, 0),
        Pair("A", 1, "A", 2, True, 0),
    ]
    names = [p.relative_to(tmp_path).as_posix() for p in unique_images(pairs, tmp_path)]
    assert names == ["A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg", "B/B_0002.jpg"]


# --------------------------------------------------------------------------- real View 1


@pytest.mark.parametrize(("name", "n"), [("pairsDevTrain.txt", 1100), ("pairsDevTest.txt", 500)])
def test_real_view1_lists(name: str, n: int) -> None:
    path = VIEW1 / name
    if not path.exists():
        pytest.skip(f"LFW View 1 not available: {path}")
    pairs = read_pairs(path)
    assert pairs.folds == 1
    assert int(pairs.same.sum()) == n and int((~pairs.same).sum()) == n
    images = unique_images(pairs, VIEW1 / "images")
    missing = [p for p in images if not p.is_file()]
    assert not missing, f"{len(missing)} referenced images missing, e.g. {missing[:3]}"
