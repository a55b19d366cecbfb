"""Linear probes on frozen trunks: per-tap heads, a Lightning module and a feature-cache mode."""

from cnnlab.probes.cached import probe_trunk_cached, train_probe_heads
from cnnlab.probes.heads import ProbeHeads, probe_dims
from cnnlab.probes.module import LinearProbe
from cnnlab.probes.trunks import calibrate_batchnorm, check_trunk_matches, freeze

__all__ = ["LinearProbe", "ProbeHeads", "calibrate_batchnorm", "check_trunk_matches", "freeze", "probe_dims", "probe_trunk_cached", "train_probe_heads"]
