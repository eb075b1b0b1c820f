"""Tests for gate.recognition.metric.losses: values derived by hand on tiny 2-D inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gate.recognition.metric.losses import (
    LOSS_NAMES,
    MINING_STRATEGIES,
    ArcFace,
    CenterLoss,
    CenterSoftmaxLoss,
    ContrastiveLoss,
    CosFace,
    SoftmaxHead,
    TripletLoss,
    make_loss,
    pairwise_distances,
)


def approx(value: float, tol: float = 1e-5) -> object:
    return pytest.approx(value, abs=tol, rel=tol)


def line(*xs: float) -> torch.Tensor:
    """Points (x, 0) in the plane, so distances are |x_i - x_j|."""
    return torch.tensor([[x, 0.0] for x in xs], requires_grad=True)


# --------------------------------------------------------------------------- distances


def test_pairwise_distances_values_and_zero_diagonal() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    d = pairwise_distances(x)
    expected = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, math.sqrt(9 + 9)], [1.0, 18**0.5, 0.0]])
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(pairwise_distances(x, squared=True), expected**2)


def test_pairwise_distances_gradient_finite_at_zero_distance() -> None:
    torch.manual_seed(0)
    base = F.normalize(torch.randn(3, 8), dim=1)
    x = torch.cat([base, base]).requires_grad_(True)  # every point has an exact duplicate
    pairwise_distances(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- contrastive


def test_contrastive_pairs_inside_and_outside_margin() -> None:
    loss = ContrastiveLoss(margin=1.0)
    a = torch.zeros(4, 2)
    b = torch.tensor([[0.3, 0.4], [0.6, 0.0], [0.0, 2.0], [2.0, 0.0]])  # d = 0.5, 0.6, 2, 2
    same = torch.tensor([True, False, False, True])
    # same d=0.5 -> 0.25; different d=0.6 (inside margin) -> (1-0.6)^2 = 0.16;
    # different d=2 (outside margin) -> 0; same d=2 -> 4.  Mean = 4.41 / 4.
    assert loss.forward_pairs(a, b, same).item() == approx(4.41 / 4)
    per_pair = [
        loss.forward_pairs(a[i : i + 1], b[i : i + 1], same[i : i + 1]).item() for i in range(4)
    ]
    assert per_pair == [approx(0.25), approx(0.16), approx(0.0), approx(4.0)]


def test_contrastive_over_all_pairs_of_a_batch() -> None:
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.6, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # pairs: (0,1) same d=0.5 -> 0.25; (0,2) diff d=0.6 -> 0.16; (1,2) diff d=0.5 -> 0.25
    assert ContrastiveLoss(margin=1.0)(x, labels).item() == approx(0.66 / 3)


def test_contrastive_gradient_finite_for_identical_same_pair() -> None:
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    loss = ContrastiveLoss()(x, torch.tensor([0, 0, 1]))
    loss.backward()
    # (0,1) same at d=0 -> 0; (0,2) and (1,2) different at d=0 -> (1 - 0)^2 each -> 2/3
    assert loss.item() == approx(2.0 / 3)
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- triplet

# A0=0, A1=2 (identity 0), B0=3, B1=7 (identity 1), margin 1.5.
# d(A0,A1)=2  d(A0,B0)=3  d(A0,B1)=7  d(A1,B0)=1  d(A1,B1)=5  d(B0,B1)=4
# All triplets l = d(a,p) - d(a,n) + 1.5:
#   (A0,A1,B0)= 0.5   (A0,A1,B1)=-3.5
#   (A1,A0,B0)= 2.5   (A1,A0,B1)=-1.5
#   (B0,B1,A0)= 2.5   (B0,B1,A1)= 4.5
#   (B1,B0,A0)=-1.5   (B1,B0,A1)= 0.5
# batch_all: 5 active of 8, (0.5+2.5+2.5+4.5+0.5)/5 = 2.1
# batch_hard (one positive per anchor, closest negative):
#   A0: 2-3+1.5=0.5  A1: 2-1+1.5=2.5  B0: 4-1+1.5=4.5  B1: 4-5+1.5=0.5 -> 8/4 = 2.0, 4/4 active
# semi_hard (closest negative farther than the positive, else the closest negative):
#   (A0,A1): {3,7} -> 3 -> 0.5   (A1,A0): {5} -> 5 -> 0   (B1,B0): {7,5} -> 5 -> 0.5
#   (B0,B1): none of {3,1} > 4 -> fallback 1 -> 4.5           -> 5.5/4 = 1.375, 3/4 active
MINING_CASE = {
    "batch_all": (2.1, 5 / 8),
    "batch_hard": (2.0, 1.0),
    "semi_hard": (1.375, 3 / 4),
}


@pytest.mark.parametrize("mining", MINING_STRATEGIES)
def test_triplet_mining_hand_values(mining: str) -> None:
    loss_fn = TripletLoss(margin=1.5, mining=mining)  # type: ignore[arg-type]
    loss = loss_fn(line(0, 2, 3, 7), torch.tensor([0, 0, 1, 1]))
    expected, active = MINING_CASE[mining]
    assert loss.item() == approx(expected)
    assert loss_fn.last_active_fraction.item() == approx(active)


def test_triplet_minings_differ_on_the_same_batch() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    values = {
        mining: TripletLoss(1.5, mining)(line(0, 2, 3, 7), labels).item()  # type: ignore[arg-type]
        for mining in MINING_STRATEGIES
    }
    assert len({round(v, 4) for v in values.values()}) == 3


def test_batch_hard_uses_hardest_positive_and_negative() -> None:
    # anchor 0 at x=0: positives at 1 and 4 (hardest = 4); negatives at 5 and 9 (hardest = 5).
    x = line(0, 1, 4, 5, 9)
    labels = torch.tensor([0, 0, 0, 1, 1])
    loss_fn = TripletLoss(margin=2.0, mining="batch_hard")
    d = pairwise_distances(x.detach())
    # per anchor: max positive - min negative + 2, clamped at 0
    # a0: 4-5+2=1   a1(x=1): max(1,3)=3, min(4,8)=4 -> 1   a2(x=4): max(4,3)=4, min(1,5)=1 -> 5
    # a3(x=5): pos 4, neg min(5,4,1)=1 -> 5   a4(x=9): pos 4, neg min(9,8,5)=5 -> 1
    assert d[0, 2].item() == 4.0 and d[0, 3].item() == 5.0
    assert loss_fn(x, labels).item() == approx((1 + 1 + 5 + 5 + 1) / 5)


@pytest.mark.parametrize("mining", MINING_STRATEGIES)
def test_triplet_zero_when_margin_met(mining: str) -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]], requires_grad=True)
    loss_fn = TripletLoss(margin=1.0, mining=mining)  # type: ignore[arg-type]
    loss = loss_fn(x, torch.tensor([0, 0, 1, 1]))  # d(a,p)=1, d(a,n)>=10 > 1 + margin
    loss.backward()
    assert loss.item() == 0.0
    assert loss_fn.last_active_fraction.item() == 0.0
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("mining", MINING_STRATEGIES)
def test_triplet_gradient_pulls_positive_and_pushes_negative(mining: str) -> None:
    a, p, n = (0.0, 0.0), (2.0, 0.0), (0.0, 1.0)
    x = torch.tensor([a, p, n], requires_grad=True)
    loss = TripletLoss(margin=1.0, mining=mining)(x, torch.tensor([0, 0, 1]))  # type: ignore[arg-type]
    assert loss.item() > 0
    loss.backward()
    assert x.grad is not None
    # the positive (right of the anchor) is pushed left by descent: dL/dp_x > 0;
    # the negative (above the anchor) is pushed up: dL/dn_y < 0
    assert x.grad[1, 0] > 0 and x.grad[2, 1] < 0
    with torch.no_grad():
        before = pairwise_distances(x)
        after = pairwise_distances(x - 0.05 * x.grad)
    assert after[0, 1] < before[0, 1]  # d(a, p) shrinks
    assert after[0, 2] > before[0, 2]  # d(a, n) grows


@pytest.mark.parametrize("mining", MINING_STRATEGIES)
def test_triplet_degenerate_batches(mining: str) -> None:
    loss_fn = TripletLoss(mining=mining)  # type: ignore[arg-type]
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss_fn(x, torch.tensor([0, 0, 1, 1])).backward()  # coincident points: finite gradient
    assert x.grad is not None and torch.isfinite(x.grad).all()
    single_identity = loss_fn(
        torch.randn(4, 3, requires_grad=True), torch.zeros(4, dtype=torch.long)
    )
    assert single_identity.item() == 0.0 and single_identity.requires_grad


def test_triplet_squared_option_uses_squared_distances() -> None:
    # anchor 0, positive 1, negative 2 on a line, margin 1: (1 - 4 + 1)<0 ; anchor 1: (1 - 1 + 1)=1
    loss = TripletLoss(margin=1.0, mining="batch_all", squared=True)(
        line(0, 1, 2), torch.tensor([0, 0, 1])
    )
    assert loss.item() == approx(1.0)


def test_triplet_rejects_unknown_mining() -> None:
    with pytest.raises(ValueError, match="batch_hard"):
        TripletLoss(mining="hardest")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- center / softmax


def test_center_loss_value_and_centre_gradient() -> None:
    loss_fn = CenterLoss(num_classes=3, dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    x = torch.tensor([[3.0, 4.0], [1.0, 2.0]], requires_grad=True)
    loss = loss_fn(x, torch.tensor([0, 1]))
    # 0.5 * mean(||(3,4)||^2, ||(0,1)||^2) = 0.5 * (25 + 1) / 2
    assert loss.item() == approx(6.5)
    loss.backward()
    grad = loss_fn.centers.grad
    assert grad is not None
    # dL/dc_j = -(1/N) * sum_{y_i=j} (x_i - c_j); the unused centre gets nothing
    torch.testing.assert_close(grad, torch.tensor([[-1.5, -2.0], [0.0, -0.5], [0.0, 0.0]]))
    assert x.grad is not None and torch.allclose(x.grad, torch.tensor([[1.5, 2.0], [0.0, 0.5]]))


def test_softmax_and_center_softmax_values() -> None:
    x = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    labels = torch.tensor([0, 1])
    head = SoftmaxHead(dim=2, num_classes=3)
    combined = CenterSoftmaxLoss(dim=2, num_classes=3, center_weight=0.1)
    with torch.no_grad():
        for linear in (head.fc, combined.softmax.fc):
            linear.weight.zero_()
            linear.bias.zero_()
        combined.center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    # zero logits over 3 classes: CE = ln 3 ; centre term as above = 6.5
    assert head(x, labels).item() == approx(math.log(3))
    assert combined(x, labels).item() == approx(math.log(3) + 0.1 * 6.5)
    assert combined.logits(x).shape == (2, 3)


# --------------------------------------------------------------------------- margin heads


def unit_head(cls: type, **kwargs: float) -> ArcFace | CosFace:
    head = cls(dim=2, num_classes=2, **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # normalised inside
    return head


EMB = torch.tensor([[3.0, 4.0]])  # normalised (0.6, 0.8): cos to class 0 = 0.6, class 1 = 0.8
LABEL = torch.tensor([0])


@pytest.mark.parametrize("cls", [ArcFace, CosFace])
def test_margin_heads_with_zero_margin_equal_scaled_cosine_softmax(cls: type) -> None:
    head = unit_head(cls, s=2.0, m=0.0)
    # logits 2*0.6=1.2 and 2*0.8=1.6 -> CE = -log(e^1.2 / (e^1.2 + e^1.6)) = log(1 + e^0.4)
    assert head(EMB, LABEL).item() == approx(math.log(1 + math.exp(0.4)))
    torch.testing.assert_close(head.logits(EMB, LABEL), torch.tensor([[1.2, 1.6]]))


def test_arcface_true_logit_is_s_cos_theta_plus_m() -> None:
    head = unit_head(ArcFace, s=2.0, m=0.5)
    logits = head.logits(EMB, LABEL)
    target = math.cos(math.acos(0.6) + 0.5)  # = 0.6 cos 0.5 - 0.8 sin 0.5 ~= 0.14301
    assert logits[0, 0].item() == approx(2.0 * target)
    assert logits[0, 1].item() == approx(1.6)  # other classes untouched
    torch.testing.assert_close(head.logits(EMB), torch.tensor([[1.2, 1.6]]))  # no labels: no margin
    assert head(EMB, LABEL).item() == approx(math.log(1 + math.exp(1.6 - 2.0 * target)))


def test_cosface_true_logit_is_s_cos_minus_m() -> None:
    head = unit_head(CosFace, s=2.0, m=0.35)
    logits = head.logits(EMB, LABEL)
    assert logits[0, 0].item() == approx(2.0 * (0.6 - 0.35))
    assert logits[0, 1].item() == approx(1.6)
    assert head(EMB, LABEL).item() == approx(math.log(1 + math.exp(1.6 - 0.5)))


def test_arcface_theta_plus_m_beyond_pi() -> None:
    emb = torch.tensor([[-0.95, math.sqrt(1 - 0.95**2)]])  # cos(theta)=-0.95: theta+0.5 > pi
    assert math.acos(-0.95) + 0.5 > math.pi
    fallback = unit_head(ArcFace, s=2.0, m=0.5).logits(emb, LABEL)[0, 0].item()
    assert fallback == approx(2.0 * (-0.95 - 0.5 * math.sin(0.5)))
    easy = unit_head(ArcFace, s=2.0, m=0.5, easy_margin=True)
    assert easy.logits(emb, LABEL)[0, 0].item() == approx(2.0 * -0.95)
    # easy margin still applies the margin when cos(theta) > 0
    assert easy.logits(EMB, LABEL)[0, 0].item() == approx(2.0 * math.cos(math.acos(0.6) + 0.5))


@pytest.mark.parametrize(("cls", "margin"), [(ArcFace, 0.5), (CosFace, 0.35)])
def test_margin_makes_the_loss_larger(cls: type, margin: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    labels = torch.randint(0, 5, (16,))
    plain = cls(dim=8, num_classes=5, s=16.0, m=0.0)
    margined = cls(dim=8, num_classes=5, s=16.0, m=margin)
    with torch.no_grad():
        margined.weight.copy_(plain.weight)
    assert margined(x, labels).item() > plain(x, labels).item()


@pytest.mark.parametrize("cls", [ArcFace, CosFace])
def test_margin_heads_gradient_finite_when_aligned(cls: type) -> None:
    head = cls(dim=3, num_classes=4)
    x = head.weight.detach()[:2].clone().requires_grad_(True)  # cos(theta) = 1 exactly-ish
    head(x, torch.tensor([0, 1])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


# --------------------------------------------------------------------------- factory


def test_make_loss_builds_every_name() -> None:
    expected = {
        "contrastive": ContrastiveLoss,
        "triplet": TripletLoss,
        "softmax": SoftmaxHead,
        "center": CenterSoftmaxLoss,
        "arcface": ArcFace,
        "cosface": CosFace,
    }
    assert set(LOSS_NAMES) == set(expected)
    x = torch.randn(8, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for name, cls in expected.items():
        loss_fn = make_loss(name, dim=4, num_classes=4)
        assert isinstance(loss_fn, cls)
        value = loss_fn(x, labels)
        assert value.dim() == 0 and torch.isfinite(value)


def test_make_loss_forwards_options() -> None:
    triplet = make_loss("Triplet", dim=4, num_classes=2, mining="batch_hard", margin=0.3)
    assert isinstance(triplet, TripletLoss)
    assert (triplet.mining, triplet.margin) == ("batch_hard", 0.3)
    arc = make_loss("arcface", dim=4, num_classes=7, s=30.0, m=0.4)
    assert isinstance(arc, ArcFace) and (arc.num_classes, arc.s, arc.m) == (7, 30.0, 0.4)
    assert tuple(arc.weight.shape) == (7, 4)


def test_make_loss_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'sphereface'") as info:
        make_loss("sphereface", dim=4, num_classes=2)
    for name in ("contrastive", "triplet", "center", "arcface", "cosface"):
        assert name in str(info.value)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        TripletLoss()(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        ArcFace(4, 2)(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
