"""Which assets this collector replica streams, when several replicas split the asset universe.

Pure: no I/O. Every replica computes the same answer from the same inputs, so they need not talk to each
other. The owner of an asset is chosen by rendezvous (highest-random-weight) hashing over SHA-256: each
replica index scores every asset, and the highest score wins. It is stable across processes, Python
versions and machines (unlike the salted built-in ``hash()``), spreads assets evenly, and when the number
of replicas changes from N to N+1 only the assets the new replica wins move (about 1/(N+1) of them);
``sha256(id) mod N`` would move most of them.

The replica index comes from ``COINPULSE_REPLICA_INDEX`` or, in a Kubernetes StatefulSet, from the pod
name's ordinal suffix (``coinpulse-collector-2`` is replica 2): see ``replica_ordinal``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Shard", "owner_of", "replica_ordinal"]

_ORDINAL = re.compile(r"-(\d+)$")


def _score(asset_id: str, replica: int) -> int:
    digest = hashlib.sha256(f"{asset_id}\x00{replica}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner_of(asset_id: str, replicas: int) -> int:
    """The index (0 … replicas-1) of the replica that streams ``asset_id``."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if replicas == 1:
        return 0
    return max(range(replicas), key=lambda replica: _score(asset_id, replica))


def replica_ordinal(hostname: str) -> int:
    """The ordinal of a StatefulSet pod from its name (``coinpulse-collector-2`` → 2)."""
    match = _ORDINAL.search(hostname.split(".", 1)[0])
    if match is None:
        raise ValueError(
            f"the hostname {hostname!r} has no ordinal suffix like '-0' (StatefulSet pods are named <name>-<n>)")
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class Shard:
    """Replica ``index`` of ``replicas``; ``Shard(0, 1)`` owns everything."""

    index: int = 0
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1 or not 0 <= self.index < self.replicas:
            raise ValueError(f"replica index must be in [0, {self.replicas}), got {self.index}")

    @property
    def whole(self) -> bool:
        """True when this replica is the only one (it owns every asset)."""
        return self.replicas == 1

    def owns(self, asset_id: str) -> bool:
        return owner_of(asset_id, self.replicas) == self.index

    def select(self, asset_ids: Iterable[str]) -> tuple[str, ...]:
        """This replica's assets among ``asset_ids``, in their order, without duplicates."""
        return tuple(asset for asset in dict.fromkeys(asset_ids) if self.owns(asset))

    def __str__(self) -> str:
        return f"{self.index}/{self.replicas}"
