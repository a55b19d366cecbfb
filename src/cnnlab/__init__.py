"""cnnlab: colorization pretraining, linear probes and CNN visualization on Lightning + Hydra."""

import os

# Idle torch (OpenMP) threads sleep instead of spinning: read once, when torch loads, so it is set when the package
# is imported, before any command imports torch; worker processes inherit it. On a CPU shared with other work
# spinning threads were 14x slower per training step, sleeping ones 2x faster than one thread (docs/benchmarks.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from cnnlab.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
