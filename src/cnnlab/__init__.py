"""cnnlab: colorization pretraining, linear probes and CNN visualization on Lightning + Hydra."""

__version__ = "0.1.0"

from cnnlab.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
