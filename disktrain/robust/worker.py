"""Real attacking workers: the Byzantine ranks replace their own gradient before communication.

The attacking rank computes its gradient, replaces it, and sends the bad vector through the
real aggregation round, so the data path, the communication and the rule run as in a real
fault.

Protocol, per training step, on EVERY rank, between backward and the grad-sync step:

1. Omniscient attacks (OMNISCIENT: sign-flip, ipm, alie, mimic, opt-ipm, opt-alie) read the
   honest gradients: every rank joins one all-gather of the true flat gradients (one extra
   collective of the gradient's size per step, only when such an attack is configured).
   The others (gaussian, nan, inf, label-flip) need no collective.
2. Each attacking rank computes the attack from the honest rows (the ranks not attacking, in
   rank order), with n_total = world size and f = the number of attacking ranks, and writes it
   into its parameters' gradients. All attackers send the same vector (they collude, as in
   ByzFL); gaussian draws from a generator seeded by the seed and the step count, the same on
   every attacker. opt-ipm and opt-alie search their factor against the defender's rule
   (`robust`: its pre-aggregators and rule, at the same step; centered clipping from a zero
   center).
3. The grad-sync step (RobustAggregate, or the mean) then aggregates what every rank sends.

Label flipping attacks the data instead: ByzantineWorker.labels flips the batch's labels on an
attacking rank (y -> num_classes - 1 - y) before the loss; its gradient is then sent as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from disktrain.errors import check_min
from disktrain.robust.attacks import ATTACKS, OMNISCIENT, attack_params, craft
from disktrain.robust.config import RobustConfig, aggregate
from disktrain.robust.grads import flat_grads, set_flat_grads
from disktrain.robust.sync import gather

LABEL_FLIP = "label-flip"
"""The data attack: attacking ranks train on flipped labels."""
WORKER_ATTACKS = (*ATTACKS, LABEL_FLIP)
"""Every attack a worker can run."""


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Which ranks attack, and how."""

    attack: str
    """One of WORKER_ATTACKS: an attack of disktrain.robust.attacks, or label-flip."""
    ranks: tuple[int, ...]
    """The attacking ranks (at least one)."""
    params: Mapping[str, float] = field(default_factory=dict)
    """The attack's parameters (e.g. {"eps": 4.0} for ipm, {"std": 1.0} for gaussian)."""
    seed: int = 0
    """Seed of the gaussian attack's noise (with the step count)."""

    def __post_init__(self) -> None:
        if self.attack not in WORKER_ATTACKS:
            raise ValueError(f"AttackConfig.attack {self.attack!r} is unknown; choose one of "
                             f"{', '.join(WORKER_ATTACKS)}")
        ranks = tuple(self.ranks)
        object.__setattr__(self, "ranks", ranks)
        if not ranks or min(ranks) < 0 or len(set(ranks)) != len(ranks):
            raise ValueError(f"AttackConfig.ranks must be distinct ranks >= 0, at least one, "
                             f"got {list(ranks)}")
        allowed = set() if self.attack == LABEL_FLIP else attack_params(self.attack)
        if unknown := set(self.params) - allowed:
            raise ValueError(f"AttackConfig.params: attack {self.attack!r} takes no parameter "
                             f"{', '.join(sorted(unknown))}; its parameters: "
                             f"{', '.join(sorted(allowed)) or 'none'}")
        check_min(self, 0, "seed", owner="AttackConfig.")

    def check_world_size(self, world_size: int) -> None:
        """ValueError unless every attacking rank exists and one rank at least is honest."""
        if max(self.ranks) >= world_size or len(self.ranks) >= world_size:
            raise ValueError(f"attacking ranks {list(self.ranks)} need world size > "
                             f"{max(self.ranks)} with an honest rank, got {world_size}")


def flip_labels(labels: Tensor, num_classes: int) -> Tensor:
    """y -> num_classes - 1 - y for the labels in [0, num_classes); others (e.g. an ignore
    index) unchanged."""
    valid = (labels >= 0) & (labels < num_classes)
    return torch.where(valid, num_classes - 1 - labels, labels)


class ByzantineWorker:
    """The attack hook of one rank (module docstring: the protocol). Build it on every rank
    from the same configs; call `labels` on each batch's labels before the loss and the
    instance itself between backward and the grad-sync step."""

    def __init__(self, cfg: AttackConfig, robust: RobustConfig, *, rank: int, world_size: int,
                 num_classes: int | None = None) -> None:
        cfg.check_world_size(world_size)
        if cfg.attack == LABEL_FLIP and (num_classes is None or num_classes < 2):
            raise ValueError(f"label-flip needs num_classes >= 2, got {num_classes}")
        self.cfg, self.robust = cfg, robust
        self.rank, self.world_size, self.num_classes = rank, world_size, num_classes
        self.attacking = rank in cfg.ranks
        self.honest = [r for r in range(world_size) if r not in cfg.ranks]
        self.steps = 0

    def labels(self, labels: Tensor) -> Tensor:
        """The labels this rank trains on: flipped on an attacking rank under label-flip."""
        if self.attacking and self.cfg.attack == LABEL_FLIP:
            return flip_labels(labels, self.num_classes)
        return labels

    def __call__(self, params: list[torch.nn.Parameter]) -> None:
        step, self.steps = self.steps, self.steps + 1
        omniscient = self.cfg.attack in OMNISCIENT
        if self.cfg.attack == LABEL_FLIP or not (omniscient or self.attacking):
            return
        flat = flat_grads(params)
        # omniscient: every rank joins the gather; otherwise only the size and dtype are read
        honest = gather(flat)[self.honest] if omniscient else flat[None]
        if not self.attacking:
            return
        generator = torch.Generator().manual_seed((self.cfg.seed << 32) + step)
        bad = craft(self.cfg.attack, honest, n_total=self.world_size, f=len(self.cfg.ranks),
                    generator=generator,
                    aggregate=lambda x: aggregate(x, self.robust, step=step),
                    **self.cfg.params)
        set_flat_grads(params, bad.to(flat))

    def state_dict(self) -> dict:
        """The steps taken (they seed the gaussian attack), alike on every rank."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Go on from :meth:`state_dict`."""
        self.steps = int(state["steps"])

