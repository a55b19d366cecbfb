"""Understanding tools for trained CNNs: filters, top patches, embeddings, occlusion, attributions, colour units.

Pure functions live in one module per analysis; :mod:`cnnlab.analysis.runners` draws each as a
report section, and ``cnnlab-analyze`` (:mod:`cnnlab.analyze`) runs the configured ones on a
:class:`~cnnlab.subject.Subject` (a cnnlab checkpoint or trunk file, or any torchvision classifier).
"""

from cnnlab.analysis.attribution import attribute
from cnnlab.analysis.embedding import mosaic, nearest_neighbours, neighbour_purity, tsne_embed
from cnnlab.analysis.occlusion import occlusion_map
from cnnlab.analysis.patches import Patch, mine_top_patches, receptive_fields
from cnnlab.analysis.report import Report

__all__ = [
    "Patch", "Report", "attribute", "mine_top_patches", "mosaic", "nearest_neighbours",
    "neighbour_purity", "occlusion_map", "receptive_fields", "tsne_embed",
]
