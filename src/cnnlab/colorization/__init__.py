"""Colorization as self-supervision: colour targets, sparse/dense hypercolumns, decoding, metrics."""

from cnnlab.colorization.bins import (ab_bin_centers, rebalance_weights, smooth_prior, soft_cross_entropy, soft_encode)
from cnnlab.colorization.decode import decode_ab, decode_hue_chroma
from cnnlab.colorization.hypercolumn import (HypercolumnHead, TapNorm, dense_hypercolumns, sample_hypercolumns)
from cnnlab.colorization.metrics import AbAuC, ColorizationMetrics, ab_error_auc

__all__ = ["AbAuC", "ColorizationMetrics", "HypercolumnHead", "TapNorm", "ab_bin_centers", "ab_error_auc", "decode_ab",
           "decode_hue_chroma", "dense_hypercolumns", "rebalance_weights", "sample_hypercolumns", "smooth_prior",
           "soft_cross_entropy", "soft_encode"]
