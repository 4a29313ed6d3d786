"""pairline: a latency-first coding model stack for one user at a time."""

import os

__version__ = "0.1.0"

# torch's CPU build uses GNU OpenMP, whose idle threads spin for a long time before sleeping. When
# another process wants a core, each of the ~900 small ops of a decode step then waits for a
# descheduled spinner: measured on 2 cores, decode fell from ~25 to 0.5 tok/s. A short spin keeps
# the quiet-machine speed (it measured no slower) and degrades gently under load. Must be set
# before torch loads OpenMP; an explicit setting by the user wins.
os.environ.setdefault("GOMP_SPINCOUNT", "20000")
