"""Image-as-parameter visualizations and attacks (``cnnlab-visualize``).

The building blocks live in submodules (import what you need; this file stays cheap to import so
the console script starts fast):

- ``network``: a frozen network seen from RGB images in [0, 1], with named layers
- ``param``: pixel, Fourier (decorrelated colour) and MACO (fixed natural magnitude, phase only) images
- ``spectrum``: natural-image Fourier magnitudes (cached) and the spectrum distance to natural images
- ``objectives`` / ``regularizers`` / ``transforms``: what to optimize and how to keep it natural
- ``hooks``: forward hooks by layer name, always removed
- ``module``: ``ImageOptimization``, the LightningModule whose only parameter is the image
- ``saliency``, ``attacks``: pure functions (saliency maps, FGSM/PGD with restarts/robustness curves/minimal perturbations/fooling)
- ``experiments``: the configured experiments run by ``cli``
"""

from __future__ import annotations


def main() -> None:
    """Console entry point ``cnnlab-visualize`` (Hydra config ``conf/visualize.yaml``)."""
    from cnnlab.visualize.cli import main as _main

    _main()


__all__ = ["main"]
