"""What each image layer contributes to an SBOM (builds/provenance/layers.py),
kept per team and layer digest, so a base image's layers (busybox, debian) are
read once per team rather than once per build (builds/worker/layer_reads.py).

Keyed by team on purpose: teams are strangers, and a cache shared between
them would tell team B, by how fast its SBOM came, that team A had built on a
layer; team B never hits team A's entries, so it reads the layer itself.
Only contributions of layers whose bytes matched their digest are kept
(layer_reads verifies before it puts), so nothing can poison an entry.

In the worker's process, bounded by bytes (least recently used out first),
not in Redis: an entry is taken in the read that follows a push, where a
round trip and a decode would cost what a small layer's read does; nothing
is shared between processes that another could write into; and a lost
entry (a restart, another prefork child of the worker) costs one read of a
layer, not a wrong SBOM.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from builds.provenance.layers import Contribution

MAX_BYTES = 64 << 20


class LayerCache:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes, self.held = max_bytes, 0
        self._entries: OrderedDict[tuple[int | None, str], Contribution] = OrderedDict()
        self._lock = threading.Lock()  # the attestation reads of a threads pool's builds

    def get(self, team_id: int | None, digest: str) -> Contribution | None:
        with self._lock:
            found = self._entries.get((team_id, digest))
            if found is not None:
                self._entries.move_to_end((team_id, digest))
            return found

    def put(self, team_id: int | None, digest: str, contribution: Contribution) -> None:
        """Keeps a verified layer's contribution (one larger than the whole cache is not kept)."""
        if contribution.size > self.max_bytes:
            return
        with self._lock:
            if (old := self._entries.pop((team_id, digest), None)) is not None:
                self.held -= old.size
            self._entries[(team_id, digest)] = contribution
            self.held += contribution.size
            while self.held > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.held -= dropped.size


layers = LayerCache()  # the worker process's one
