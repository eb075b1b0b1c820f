"""Reading the Labeled Faces in the Wild (LFW) pair lists.

Two layouts are supported by :func:`read_pairs`:

* View 2 ``pairs.txt``: a header ``<folds> <n>``, then for each fold ``n`` matched lines
  ``name i j`` followed by ``n`` mismatched lines ``name1 i name2 j`` (10 folds of 300 + 300);
* View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``: a header ``<n>``, then ``n`` matched and
  ``n`` mismatched lines, all in one fold.

Fields may be separated by tabs or spaces; CRLF line ends and trailing blank lines are accepted.
Images live at ``root/<Name>/<Name>_<NNNN>.jpg`` (index zero-padded to four digits).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["Pair", "PairSet", "image_path", "read_pairs", "unique_images"]


def image_path(root: str | Path, name: str, index: int) -> Path:
    """The LFW image ``root/<name>/<name>_<index:04d>.jpg``."""
    return Path(root) / name / f"{name}_{index:04d}.jpg"


@dataclass(frozen=True)
class Pair:
    """One pair of LFW images; ``same`` is True for a matched (same person) pair."""

    name1: str
    index1: int
    name2: str
    index2: int
    same: bool
    fold: int

    def paths(self, root: str | Path) -> tuple[Path, Path]:
        """The two image paths under the LFW image folder ``root``."""
        return image_path(root, self.name1, self.index1), image_path(root, self.name2, self.index2)


@dataclass
class PairSet:
    """The pairs of one LFW pair file, in file order, and its number of folds."""

    pairs: list[Pair] = field(default_factory=list)
    folds: int = 1

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    @property
    def same(self) -> NDArray[np.bool_]:
        """Ground truth per pair (True = same person)."""
        return np.asarray([p.same for p in self.pairs], dtype=bool)

    @property
    def fold_labels(self) -> NDArray[np.int64]:
        """Fold number (0-based) per pair, for :func:`.evaluation.kfold_accuracy`."""
        return np.asarray([p.fold for p in self.pairs], dtype=np.int64)


class _Lines:
    """Numbered, stripped lines of a pair file, for error messages naming file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        self.lines = [line.strip() for line in lines]

    def error(self, number: int, message: str) -> ValueError:
        """A ValueError for 1-based line ``number``."""
        return ValueError(f"{self.path}, line {number}: {message}")


def _positive_int(token: str, lines: _Lines, number: int, what: str) -> int:
    """``token`` as an int >= 1, or a ValueError naming the line."""
    try:
        value = int(token)
    except ValueError:
        raise lines.error(number, f"{what} must be an integer, got {token!r}") from None
    if value < 1:
        raise lines.error(number, f"{what} must be at least 1, got {value}")
    return value


def _read_header(lines: _Lines) -> tuple[int, int]:
    """``(folds, pairs per half-fold)`` from the first line."""
    if not lines.lines:
        raise ValueError(f"{lines.path}: empty pair file")
    tokens = lines.lines[0].split()
    if len(tokens) == 1:
        return 1, _positive_int(tokens[0], lines, 1, "pair count")
    if len(tokens) == 2:
        folds = _positive_int(tokens[0], lines, 1, "fold count")
        return folds, _positive_int(tokens[1], lines, 1, "pair count")
    raise lines.error(1, f"header must be '<n>' or '<folds> <n>', got {lines.lines[0]!r}")


def _parse_pair(lines: _Lines, number: int, same: bool, fold: int) -> Pair:
    """Parse line ``number`` as a matched (3 fields) or mismatched (4 fields) pair."""
    tokens = lines.lines[number - 1].split()
    if same:
        if len(tokens) != 3:
            raise lines.error(number, f"expected a matched pair 'name i j', got {tokens}")
        name, i, j = tokens
        return Pair(
            name,
            _positive_int(i, lines, number, "image index"),
            name,
            _positive_int(j, lines, number, "image index"),
            True,
            fold,
        )
    if len(tokens) != 4:
        raise lines.error(number, f"expected a mismatched pair 'name1 i name2 j', got {tokens}")
    name1, i, name2, j = tokens
    if name1 == name2:
        raise lines.error(number, f"mismatched pair names the same person twice: {name1}")
    return Pair(
        name1,
        _positive_int(i, lines, number, "image index"),
        name2,
        _positive_int(j, lines, number, "image index"),
        False,
        fold,
    )


def read_pairs(path: str | Path) -> PairSet:
    """Read an LFW pair file (View 2 ``pairs.txt`` or View 1 ``pairsDev*.txt``)."""
    lines = _Lines(Path(path))
    folds, n = _read_header(lines)
    expected = folds * 2 * n
    found = len(lines.lines) - 1
    if found != expected:
        raise ValueError(
            f"{lines.path}: header announces {folds} fold(s) of {n} matched + {n} mismatched "
            f"pairs ({expected} lines), but the file has {found} pair lines"
        )
    pairs = []
    for k in range(expected):
        fold, within = divmod(k, 2 * n)
        pairs.append(_parse_pair(lines, k + 2, within < n, fold))
    return PairSet(pairs=pairs, folds=folds)


def unique_images(pairs: Iterable[Pair], root: str | Path) -> list[Path]:
    """Every image referenced by ``pairs``, once each, sorted (so each is encoded once)."""
    return sorted({path for pair in pairs for path in pair.paths(root)})
