"""What one item's run made and cost, and where it ran: what engines return and the run report records."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field


@dataclass
class RunStats:
    """Where an item ran and what it cost (the run report's per-item record)."""

    node: str = ""  # host name, and the Ray node id on a cluster
    # wall seconds of the tile phase ("tiles") and of making and placing the COGs ("cog", uploads included), and the
    # busy seconds of the tile phase's stages ("read", "model", "write"), which overlap one another
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_read: int = 0  # compressed source bytes fetched (the source blocks read)
    bytes_written: int = 0  # bytes of the COGs written or uploaded
    started: float = 0.0  # Unix time the item's first tile was read
    finished: float = 0.0  # Unix time its last COG was in place


@dataclass
class RunResult:
    """An item's COGs (``{url: href}``, None when no pixel was valid: nothing written) and its :class:`RunStats`."""

    hrefs: dict[str, str] | None
    stats: RunStats


def node_name() -> str:
    """This host's name, with the Ray node id when this process is a Ray worker or driver."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return f"{host} {ray.get_runtime_context().get_node_id()}"
    return host
