"""Colorization as self-supervision: colour targets, decoding, metrics (the hypercolumns are :mod:`cnnlab.hypercolumn`)."""

from cnnlab.colorization.bins import (ab_bin_centers, rebalance_weights, smooth_prior, soft_cross_entropy, soft_encode)
from cnnlab.colorization.decode import decode_ab, decode_hue_chroma
from cnnlab.colorization.metrics import AbAuC, ColorizationMetrics, ab_error_auc

__all__ = ["AbAuC", "ColorizationMetrics", "ab_bin_centers", "ab_error_auc", "decode_ab", "decode_hue_chroma",
           "rebalance_weights", "smooth_prior", "soft_cross_entropy", "soft_encode"]
