"""The trainable part of an encoder variant, and the variant file that carries it.

An **encoder variant** adapts the ``dlib-torch`` encoder to a site: a projection head
(:class:`ProjectionHead`, ``128 -> D``, L2-normalised output) on top of dlib's frozen ResNet,
optionally with the ResNet's last residual block(s) and its final fully connected layer
fine-tuned too. ``gate train`` writes one; ``[encoders.dlib-torch] variant = "NAME"`` uses it.

A variant file is a ``torch.save`` of a plain dict (read back with ``weights_only=True``, so
loading one never runs code)::

    format      "gate-encoder-variant-1"
    base        {"encoder": "dlib-torch", "space": "dlib-resnet-v1", "dim": 128}
    head        {"kind": "linear" | "mlp", "in_dim": 128, "out_dim": D, "hidden": H | None,
                 "state_dict": {name: tensor}}
    backbone    {"blocks": [indices of the fine-tuned residual blocks], "fused": True,
                 "state_dict": {DlibResNet key: tensor}}   (empty when nothing was unfrozen)
    threshold   the match distance chosen on the validation people (see metric.train)
    threshold_rule, loss, training, data, metrics, created_at   (descriptive; never photos)

Backbone weights are stored *fused* (dlib's per-channel affine folded into each convolution,
as :meth:`DlibResNet.fuse_affine` does), which is how the encoder runs the network.

A name resolves to ``<data dir>/encoders/<name>.pt``, the data dir being ``$GATE_DATA_DIR`` when
set, else ``platformdirs.user_data_dir("gate")``; a value with a path separator or a ``.pt``
suffix is a path, used as is.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from gate.errors import ConfigError

if TYPE_CHECKING:
    from gate.recognition.nn.dlib_resnet import DlibResNet

__all__ = [
    "BASE_DIM",
    "BASE_ENCODER",
    "BASE_SPACE",
    "MAX_UNFROZEN_BLOCKS",
    "VARIANT_FORMAT",
    "ProjectionHead",
    "Variant",
    "apply_variant",
    "backbone_state",
    "load_variant",
    "save_variant",
    "tail_blocks",
    "tail_forward",
    "trunk_forward",
    "variant_path",
    "variants_dir",
]

VARIANT_FORMAT = "gate-encoder-variant-1"
BASE_ENCODER = "dlib-torch"
BASE_SPACE = "dlib-resnet-v1"
BASE_DIM = 128
NUM_BLOCKS = 14
#: At most this many residual blocks may be fine-tuned (their inputs are cached in training).
MAX_UNFROZEN_BLOCKS = 4
DATA_ENV = "GATE_DATA_DIR"


# --------------------------------------------------------------------------- the head


class ProjectionHead(nn.Module):
    """``in_dim -> out_dim`` projection with an L2-normalised output.

    The projection ``f`` makes ``out_dim - 1`` coordinates; a learnt positive constant, the
    *lift*, is appended as the last one before normalising: ``normalize([f(x), lift])``.
    With a lift large against ``|f(x)|`` distances between outputs are nearly proportional to
    distances between the ``f(x)``, the Euclidean geometry dlib's descriptor was trained in
    (normalising the descriptor itself costs about a point of EER on real faces); as the
    lift shrinks the output tends to ``f(x) / |f(x)|``, angles only. Training sets it.

    ``hidden=None``: ``f`` is one linear map without bias, initialised (semi-)orthogonal, or
    from data with :meth:`start_at`. ``hidden=H``: ``f`` is a small MLP,
    ``Linear(in, H) -> ReLU -> Linear(H, out - 1)``.
    """

    def __init__(
        self,
        in_dim: int = BASE_DIM,
        out_dim: int = BASE_DIM,
        hidden: int | None = None,
        lift: float = 4.0,
    ):
        super().__init__()
        if in_dim < 1 or out_dim < 2 or (hidden is not None and hidden < 1) or lift <= 0:
            raise ValueError(f"bad head: in {in_dim}, out {out_dim}, hidden {hidden}, lift {lift}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden = hidden
        if hidden is None:
            linear = nn.Linear(in_dim, out_dim - 1, bias=False)
            nn.init.orthogonal_(linear.weight)
            self.net: nn.Module = linear
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim - 1)
            )
        self.log_lift = nn.Parameter(torch.tensor(math.log(lift)))

    @torch.no_grad()
    def start_at(self, descriptors: torch.Tensor, lift_ratio: float = 3.0) -> ProjectionHead:
        """Start a linear head at the geometry of ``descriptors`` (N x in_dim): its map keeps
        their ``out_dim - 1`` principal axes (rows orthonormal, so distances are kept within
        that subspace) and the lift is ``lift_ratio`` times their mean norm."""
        if self.hidden is not None:
            raise ValueError("only a linear head starts at the descriptors' geometry")
        x = descriptors.detach().to("cpu", torch.float64)
        centred = x - x.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        axes = vectors.flip(1).T  # principal axes first, one per row
        weight = torch.zeros(self.out_dim - 1, self.in_dim, dtype=torch.float64)
        rows = min(self.out_dim - 1, self.in_dim)
        weight[:rows] = axes[:rows]
        self.net.weight.copy_(weight.to(self.net.weight))
        self.log_lift.fill_(math.log(lift_ratio * float(x.norm(dim=1).mean())))
        return self

    @property
    def kind(self) -> str:
        return "linear" if self.hidden is None else "mlp"

    def spec(self) -> dict[str, Any]:
        """The architecture, as stored in a variant file (without the weights)."""
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "hidden": self.hidden,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> ProjectionHead:
        """An untrained head of the architecture ``spec`` describes."""
        hidden = spec.get("hidden")
        if spec.get("kind") not in ("linear", "mlp") or (spec["kind"] == "mlp") != (
            hidden is not None
        ):
            raise ValueError(f"unknown head {dict(spec)!r}")
        return cls(
            int(spec["in_dim"]), int(spec["out_dim"]), None if hidden is None else int(hidden)
        )

    @property
    def lift(self) -> float:
        return float(self.log_lift.exp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        lift = self.log_lift.exp().to(y.dtype).expand(y.shape[0], 1)
        return F.normalize(torch.cat([y, lift], dim=1), dim=1)


# --------------------------------------------------------------------------- backbone split


def tail_blocks(unfrozen: int) -> list[int]:
    """Indices of the last ``unfrozen`` residual blocks (``[]`` for none)."""
    if not 0 <= unfrozen <= MAX_UNFROZEN_BLOCKS:
        raise ValueError(f"unfreeze 0 to {MAX_UNFROZEN_BLOCKS} blocks, not {unfrozen}")
    return list(range(NUM_BLOCKS - unfrozen, NUM_BLOCKS))


def _tail_prefixes(blocks: list[int]) -> tuple[str, ...]:
    return (*(f"blocks.{i}." for i in blocks), "fc.") if blocks else ()


def trunk_forward(model: DlibResNet, x: torch.Tensor, unfrozen: int) -> torch.Tensor:
    """The frozen part of ``model``: the 128-d descriptor when ``unfrozen == 0``, else the
    activations entering the first fine-tuned block. ``tail_forward`` finishes the job, so
    ``tail_forward(model, trunk_forward(model, x, n), n) == model(x)`` for every ``n``."""
    if unfrozen == 0:
        return model(x)
    x = model.stem(x)
    for block in model.blocks[: NUM_BLOCKS - unfrozen]:
        x = block(x)
    return x


def tail_forward(model: DlibResNet, h: torch.Tensor, unfrozen: int) -> torch.Tensor:
    """The fine-tuned part of ``model`` (identity when ``unfrozen == 0``), see ``trunk_forward``."""
    if unfrozen == 0:
        return h
    for block in model.blocks[NUM_BLOCKS - unfrozen :]:
        h = block(h)
    return model.embed(h)


def backbone_state(model: DlibResNet, unfrozen: int) -> dict[str, torch.Tensor]:
    """CPU float32 copies of the weights of the last ``unfrozen`` blocks and ``fc``."""
    prefixes = _tail_prefixes(tail_blocks(unfrozen))
    if prefixes and not model.fused:
        raise ValueError("backbone weights are stored fused: call model.fuse_affine() first")
    return {
        key: value.detach().to("cpu", torch.float32).contiguous().clone()
        for key, value in model.state_dict().items()
        if key.startswith(prefixes)
    }


# --------------------------------------------------------------------------- files


def variants_dir() -> Path:
    """``$GATE_DATA_DIR/encoders`` when the variable is set, else the user data dir's."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]) / "encoders"
    import platformdirs

    return Path(platformdirs.user_data_dir("gate")) / "encoders"


def _is_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(".pt") or value.startswith("~")


def variant_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A variant name -> ``variants_dir() / f"{name}.pt"``; a path -> itself (``~`` expanded)."""
    value = os.fspath(name_or_path)
    if not value.strip():
        raise ConfigError("encoder variant: empty name")
    if isinstance(name_or_path, Path) or _is_path(value):
        return Path(value).expanduser()
    return variants_dir() / f"{value}.pt"


def _save_atomic(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _plain(value: Any) -> Any:
    """``value`` as what ``torch.load(weights_only=True)`` reads back: dicts, lists, str, int,
    float, bool, None and tensors (numpy scalars, tuples, paths and str subclasses converted)."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalar
        return _plain(value.item())
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, str | os.PathLike):
        return os.fspath(value) if isinstance(value, os.PathLike) else str.__str__(value)
    raise TypeError(f"cannot store {type(value).__name__} in a variant file")


def save_variant(data: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Check ``data`` the way :func:`load_variant` will, then write it atomically to ``path``.

    Values are converted to plain types first (see ``_plain``), so the file loads with
    ``weights_only=True``.
    """
    data = _plain(data)
    _check(data, str(path))
    return _save_atomic(data, Path(path))


def _fail(where: str, problem: str) -> ConfigError:
    return ConfigError(f"encoder variant {where}: {problem}")


def _check_state(
    state: Any, expected: Mapping[str, torch.Size], where: str, what: str, subset: bool = False
) -> None:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _fail(where, f"{what} weights are not a tensor dict")
    missing = set() if subset else set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise _fail(where, f"{what} weights: missing {sorted(missing)}, extra {sorted(unexpected)}")
    for key, value in state.items():
        if value.shape != expected[key] or not torch.isfinite(value).all():
            raise _fail(where, f"{what} weight {key}: shape {tuple(value.shape)} or values wrong")


def _check(data: Any, where: str) -> None:
    """Raise ConfigError unless ``data`` is a well-formed variant dict."""
    if not isinstance(data, dict):
        raise _fail(where, "not a variant file (expected a dict)")
    if data.get("format") != VARIANT_FORMAT:
        raise _fail(where, f"format {data.get('format')!r}, expected {VARIANT_FORMAT!r}")
    base = data.get("base")
    if not isinstance(base, dict) or (base.get("encoder"), base.get("space")) != (
        BASE_ENCODER,
        BASE_SPACE,
    ):
        raise _fail(where, f"made for another encoder ({base!r}); gate knows {BASE_ENCODER}")
    head = data.get("head")
    if not isinstance(head, dict):
        raise _fail(where, "no head")
    try:
        module = ProjectionHead.from_spec(head)
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(where, f"bad head architecture ({exc})") from None
    if module.in_dim != BASE_DIM:
        raise _fail(where, f"head takes {module.in_dim} inputs, the base encoder makes {BASE_DIM}")
    expected = {k: v.shape for k, v in module.state_dict().items()}
    _check_state(head.get("state_dict"), expected, where, "head")
    threshold = data.get("threshold")
    if not isinstance(threshold, float) or not 0.0 < threshold <= 2.0:
        raise _fail(where, f"threshold {threshold!r} is not a distance in (0, 2]")
    backbone = data.get("backbone")
    if not isinstance(backbone, dict) or not isinstance(backbone.get("blocks"), list):
        raise _fail(where, "no backbone section")
    blocks = backbone["blocks"]
    if blocks != tail_blocks(len(blocks)):
        raise _fail(where, f"fine-tuned blocks {blocks} are not the last ones")
    if blocks and backbone.get("fused") is not True:
        raise _fail(where, "backbone weights must be stored fused")
    from gate.recognition.nn.dlib_resnet import DlibResNet

    with torch.device("meta"):
        model = DlibResNet().fuse_affine()
    prefixes = _tail_prefixes(blocks)
    shapes = {
        k: v.shape for k, v in model.state_dict().items() if prefixes and k.startswith(prefixes)
    }
    _check_state(backbone.get("state_dict"), shapes, where, "backbone")


@dataclass(frozen=True)
class Variant:
    """A loaded, checked variant file."""

    name: str
    path: Path
    sha256: str
    data: dict[str, Any]

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the file's sha256."""
        return self.sha256[:12]

    @property
    def space(self) -> str:
        """The embedding space of this variant: never shared with the base or another file."""
        return f"{BASE_SPACE}+{self.name}-{self.short_hash}"

    @property
    def dim(self) -> int:
        return int(self.data["head"]["out_dim"])

    @property
    def threshold(self) -> float:
        return float(self.data["threshold"])

    @property
    def unfrozen_blocks(self) -> list[int]:
        return list(self.data["backbone"]["blocks"])

    def head(self) -> ProjectionHead:
        """A fresh head module with the trained weights, in eval mode, without gradients."""
        module = ProjectionHead.from_spec(self.data["head"])
        module.load_state_dict(self.data["head"]["state_dict"], strict=True)
        return module.eval().requires_grad_(False)


def load_variant(name_or_path: str | os.PathLike[str]) -> Variant:
    """Read and check a variant file by name or path (see the module docstring).

    A missing, unreadable, corrupt or foreign file is a :class:`ConfigError` naming it.
    """
    path = variant_path(name_or_path)
    where = f"{os.fspath(name_or_path)!r} ({path})"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = "" if _is_path(os.fspath(name_or_path)) else f" (variants live in {variants_dir()})"
        raise _fail(where, f"no such file{hint}; make one with gate train") from None
    except OSError as exc:
        raise _fail(where, f"cannot read ({exc.strerror or exc})") from None
    import io

    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding objects we refuse
        raise _fail(where, f"corrupt or not a variant file ({type(exc).__name__})") from None
    _check(data, where)
    name = path.name[: -len(".pt")] if path.name.endswith(".pt") else path.name
    return Variant(name, path, hashlib.sha256(raw).hexdigest(), data)


def apply_variant(model: DlibResNet, variant: Variant) -> ProjectionHead:
    """Load the variant's fine-tuned blocks into ``model`` (fusing it first if needed) and
    return its head on the model's device, in float32 and eval mode."""
    state = variant.data["backbone"]["state_dict"]
    device = next(model.parameters()).device
    if state:
        if not model.fused:
            model.fuse_affine()
        with torch.no_grad():
            own = model.state_dict()
            for key, value in state.items():
                own[key].copy_(value)
    return variant.head().to(device)
