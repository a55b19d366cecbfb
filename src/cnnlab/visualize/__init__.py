"""Image-as-parameter visualizations and attacks (``cnnlab-visualize``).

The building blocks live in submodules (import what you need; this file stays cheap to import so
the console script starts fast). The network they inspect is a :class:`cnnlab.subject.Subject`
(shared with ``cnnlab-analyze``), its layers read through :mod:`cnnlab.hooks`; saliency maps are
:func:`cnnlab.analysis.attribution.saliency_map` (Captum).

- ``param``: pixel, Fourier (decorrelated colour) and MACO (fixed natural magnitude, phase only) images
- ``spectrum``: natural-image Fourier magnitudes (cached) and the spectrum distance to natural images
- ``objectives`` / ``regularizers`` / ``transforms``: what to optimize and how to keep it natural
- ``module``: ``ImageOptimization``, the LightningModule whose only parameter is the image
- ``attacks``: pure functions (FGSM/PGD with restarts/robustness curves/minimal perturbations/fooling)
- ``experiments``: the configured experiments run by ``cli``
"""

from __future__ import annotations


def main() -> None:
    """Console entry point ``cnnlab-visualize`` (Hydra config ``conf/visualize.yaml``)."""
    from cnnlab.visualize.cli import main as _main

    _main()


__all__ = ["main"]
