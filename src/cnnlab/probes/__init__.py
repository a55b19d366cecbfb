"""Probes on frozen trunks: L-BFGS linear probes and kNN on stored features, and a Lightning probe module.

``probe_trunk_cached(trunk, datamodule)`` returns::

    {"taps": [...], "dims": {tap: D}, "trunk_fingerprint": str, "n_train": int, "n_val": int, "n_test": int,
     "linear": {tap: {"grid": {"<wd>": val_acc}, "weight_decay": float, "val": float, "test": float | None,
                      "converged": bool, "iterations": int, "at_grid_edge": bool, "fits": {...}}},
     "knn": {tap: {"k": int, "temperature": float, "val": float, "test": float | None}},
     "timing": {...seconds}}
"""

from cnnlab.probes.cached import probe_trunk_cached
from cnnlab.probes.heads import ProbeHeads, probe_dims
from cnnlab.probes.knn import knn_accuracy, knn_predict
from cnnlab.probes.linear import ProbeFit, fit_linear_probe
from cnnlab.probes.module import LinearProbe
from cnnlab.probes.trunks import calibrate_batchnorm, check_trunk_matches

__all__ = ["LinearProbe", "ProbeFit", "ProbeHeads", "calibrate_batchnorm", "check_trunk_matches", "fit_linear_probe",
           "knn_accuracy", "knn_predict", "probe_dims", "probe_trunk_cached"]
