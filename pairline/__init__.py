"""pairline: a latency-first coding model stack for one user at a time."""

__version__ = "0.1.0"
