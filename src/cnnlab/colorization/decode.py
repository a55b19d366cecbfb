"""Turn predicted distributions into colours. Pure tensor functions; shapes in the docstrings."""

from __future__ import annotations

import torch

from cnnlab.color import lab_to_rgb, rgb_to_lab
from cnnlab.colorization.bins import decode_chroma_median, hue_chroma_to_rgb, hue_mean_resultant

def annealed_probs(logits: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    """``softmax(log(softmax(z)) / T)`` along ``dim``: T = 1 is the plain distribution, T -> 0 its mode."""
    return torch.softmax(torch.log_softmax(logits, dim=dim) / temperature, dim=dim)


def decode_ab(logits: torch.Tensor, centers: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Lab-bin logits ``(B, Q, H, W)`` -> ab ``(B, 2, H, W)``: annealed mean (``temperature``) or expectation (None / 1).

    The temperature's one home is the model config (``model.lab.temperature``, 0.38 as in colourful colorization).
    """
    probs = torch.softmax(logits, 1) if temperature in (None, 1.0) else annealed_probs(logits, temperature)
    return torch.einsum("bqhw,qc->bchw", probs, centers.to(probs.dtype))


def lightness_from_input(x: torch.Tensor, input_space: str) -> torch.Tensor:
    """Model input ``(B, 1, H, W)`` in [0, 1] (Lab L / 100 or mean RGB) -> Lab L ``(B, 1, H, W)`` in [0, 100]."""
    if input_space == "L":
        return x * 100.0
    return rgb_to_lab(x.expand(-1, 3, -1, -1))[:, :1]


def gray_from_input(x: torch.Tensor, input_space: str) -> torch.Tensor:
    """Model input ``(B, 1, H, W)`` -> intensity = mean(RGB) ``(B, 1, H, W)`` of the neutral colour of that lightness."""
    if input_space == "gray":
        return x
    lab = torch.cat([x * 100.0, torch.zeros_like(x), torch.zeros_like(x)], 1)
    return lab_to_rgb(lab).mean(1, keepdim=True)


def compose_lab(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """L ``(B, 1, H, W)`` and ab ``(B, 2, H, W)`` (or ``(2,)`` broadcast) -> Lab ``(B, 3, H, W)``."""
    if ab.dim() == 1:
        ab = ab.view(1, 2, 1, 1).expand(lightness.shape[0], 2, *lightness.shape[-2:])
    return torch.cat([lightness, ab.to(lightness.dtype)], 1)


def decode_hue_chroma(hue_logits: torch.Tensor, chroma_logits: torch.Tensor, x: torch.Tensor, input_space: str,
                      hue_confidence: bool = True) -> torch.Tensor:
    """Hue/chroma logits ``(B, n, H, W)`` each + model input ``(B, 1, H, W)`` -> Lab ``(B, 3, H, W)``.

    Chroma: median of its histogram; hue: circular mean. With ``hue_confidence`` the chroma is
    multiplied by the hue histogram's mean resultant length, i.e. the decoded colour is
    median(chroma) * E[exp(i hue)] in the hue/chroma plane: where the hue is uncertain the
    colour moves towards gray instead of committing to the full chroma at an arbitrary mean hue
    (the paper's decode, ``hue_confidence=False``, over-saturates wrong hues; see docs/results.md).
    Hue and chroma are an RGB-space colour: it is converted to Lab once; with Lab-L input the result
    keeps the input's lightness exactly (only its ab is taken).
    """
    chroma = decode_chroma_median(torch.softmax(chroma_logits, 1).movedim(1, -1))
    hue, resultant = hue_mean_resultant(torch.softmax(hue_logits, 1).movedim(1, -1))
    if hue_confidence:
        chroma = chroma * resultant
    lab = rgb_to_lab(hue_chroma_to_rgb(hue, chroma, gray_from_input(x, input_space)))
    return compose_lab(x * 100.0, lab[:, 1:]) if input_space == "L" else lab
