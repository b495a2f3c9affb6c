"""Delays between tries, one definition for every layer: clients reconnecting, a hub
retrying a commit, a project following its broker or restarting its poll loop."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    """Jittered exponential delays: ``initial`` doubling up to ``maximum``, each
    drawn from the upper half of its step so reconnecting clients spread out."""

    initial: float = 0.2
    maximum: float = 5.0
    jitter: Callable[[], float] | None = random.random
    """Returns a number in [0, 1); injected so tests can pin the delays. None: no jitter,
    each delay is the whole step (``initial`` doubling up to ``maximum``), for retries
    of one's own work (a commit, a subscription) where nobody else must spread out."""
    _step: int = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0**self._step)
        if ceiling < self.maximum:
            self._step += 1
        if self.jitter is None:
            return ceiling
        return ceiling / 2 + ceiling / 2 * self.jitter()

    def reset(self) -> None:
        self._step = 0
