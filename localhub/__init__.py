"""localhub: a Hugging Face Hub-compatible server for tests, the offline demo and air-gapped hubs.

It imports nothing from hubflow, and hubflow's library never imports it: the product talks to it only over HTTP.
Seed data (the demo's model and dataset) is handed to it as folders.
"""

from .ports import free_port
from .server import LocalHub

__all__ = ["LocalHub", "free_port"]
