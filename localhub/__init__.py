"""localhub: a Hugging Face Hub-compatible server for tests, the offline demo and air-gapped hubs.

It never imports hubflow's flows/ or tasks/, and they never import it: the product talks to it only over HTTP.
"""

from .server import LocalHub, free_port

__all__ = ["LocalHub", "free_port"]
