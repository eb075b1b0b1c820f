"""The losses and mining strategies ``gate train`` offers, without importing torch.

The command line builds its choices from these; :mod:`.train` fits with them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_LOSS_OPTIONS", "TRAIN_LOSSES", "TRIPLET_MINING"]

#: The losses ``gate train`` offers, with the options each gets unless told otherwise. Margins
#: suit the head's start (a cap of the unit sphere where faces of different people are about
#: 0.2-0.3 apart, see ProjectionHead) and a few dozen identities.
DEFAULT_LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "contrastive": {"margin": 0.3},
    "triplet": {"margin": 0.2, "mining": "semi_hard"},
    "center": {"center_weight": 1.0},
    "arcface": {"s": 30.0, "m": 0.1},
    "cosface": {"s": 30.0, "m": 0.05},
}
TRAIN_LOSSES: tuple[str, ...] = tuple(DEFAULT_LOSS_OPTIONS)
#: The triplet loss's mining strategies (``losses.MINING_STRATEGIES``, without torch).
TRIPLET_MINING: tuple[str, ...] = ("batch_all", "batch_hard", "semi_hard")
