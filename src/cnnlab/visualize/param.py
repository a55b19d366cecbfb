"""Image parameterizations: modules with no input whose output is a batch of RGB images.

``forward() -> (B, 3, H, W)`` in [0, 1] (pixels may leave it during optimization when
``clamp=False``; the Fourier and MACO images are squashed by a sigmoid so they never do). Any height and
width, odd ones included.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.color import color_matrix
from cnnlab.errors import UserError

def _size(height: int, width: int | None) -> tuple[int, int]:
    width = height if width is None else width
    if int(height) < 1 or int(width) < 1:
        raise UserError(f"image size must be positive, got {height}x{width}")
    return int(height), int(width)


class PixelImage(nn.Module):
    """Plain pixels, stored centred on ``center`` (so L2 decay and "clip to zero" pull towards gray).

    ``init``: ``"zeros"`` (uniform ``center`` gray), ``"noise"`` (gray + N(0, ``sd``)) or a tensor
    ``(B, 3, H, W)`` in [0, 1] to start from. ``clamp``: keep pixels in [0, 1] after every step.
    """

    def __init__(self, batch: int = 1, height: int = 32, width: int | None = None, init: str | torch.Tensor = "noise",
                 sd: float = 0.1, center: float = 0.5, clamp: bool = True, channels: int = 3, seed: int | None = None):
        super().__init__()
        self.center, self.clamp = float(center), clamp
        if isinstance(init, torch.Tensor):
            start = init.detach().float().clone()
            if start.dim() == 3:
                start = start.unsqueeze(0)
            if start.dim() != 4:
                raise UserError(f"an initial image must be (B, C, H, W), got shape {tuple(init.shape)}")
            centred = start - self.center
        else:
            h, w = _size(height, width)
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            if init == "zeros":
                centred = torch.zeros(batch, channels, h, w)
            elif init == "noise":
                centred = torch.randn(batch, channels, h, w, generator=g) * sd
            else:
                raise UserError(f"unknown pixel init {init!r}: use zeros, noise or an image tensor")
        self.pixels = nn.Parameter(centred)

    def forward(self) -> torch.Tensor:
        return self.pixels + self.center

    @torch.no_grad()
    def project(self) -> None:
        """Back into the valid pixel range after an optimizer step."""
        if self.clamp:
            self.pixels.clamp_(-self.center, 1.0 - self.center)


def fourier_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """``(H, W // 2 + 1)`` amplitude scale ~ 1 / f^decay_power: low frequencies get the larger steps."""
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    freqs = torch.sqrt(fx**2 + fy**2)
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


class FourierImage(nn.Module):
    """A Fourier-space image with 1/f scaling, decorrelated colour and a sigmoid to [0, 1].

    The parameter is the (real, imaginary) spectrum ``(B, 3, H, W // 2 + 1, 2)``. A zero spectrum
    decodes to a uniform gray image of value 0.5.
    """

    def __init__(self, batch: int = 1, height: int = 32, width: int | None = None, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, seed: int | None = None):
        super().__init__()
        h, w = _size(height, width)
        self.height, self.width, self.decorrelate = h, w, decorrelate
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.spectrum = nn.Parameter(torch.randn(batch, 3, h, w // 2 + 1, 2, generator=g) * sd)
        self.register_buffer("scale", fourier_scale(h, w, decay_power), persistent=False)
        self.register_buffer("color", color_matrix(), persistent=False)

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum.contiguous()) * self.scale
        # "ortho" keeps pixel variance independent of the image size; /4 keeps the sigmoid out of saturation at start
        img = torch.fft.irfft2(spec, s=(self.height, self.width), norm="ortho") / 4.0
        if self.decorrelate:
            img = torch.einsum("ij,bjhw->bihw", self.color, img)
        return torch.sigmoid(img)

    def project(self) -> None:  # the sigmoid keeps it valid
        return None


class MacoImage(nn.Module):
    """MACO (Fel et al. 2023): a Fourier image whose magnitude is fixed, only the phase is optimized.

    ``magnitude``: ``(3, H, W // 2 + 1)`` the natural-image magnitude in the decorrelated colour space
    (``spectrum.natural_magnitude``). The image is ``sigmoid(color @ irfft2(magnitude * exp(i phase)))``.
    ``transparency``: accumulate ``|d loss / d image|`` (summed over colours) over every backward pass
    through the image; ``transparency_map()`` gives it per image in [0, 1] (where the objective looked).
    """

    def __init__(self, magnitude: torch.Tensor, batch: int = 1, seed: int | None = None, transparency: bool = True,
                 width: int | None = None):
        super().__init__()
        if magnitude.dim() != 3 or magnitude.shape[0] != 3:
            raise UserError(f"a MACO magnitude must be (3, H, W // 2 + 1), got shape {tuple(magnitude.shape)}")
        self.height = int(magnitude.shape[1])
        self.width = int(width) if width is not None else 2 * (int(magnitude.shape[2]) - 1)  # odd widths: pass them
        if self.width // 2 + 1 != magnitude.shape[2]:
            raise UserError(f"a MACO magnitude of {magnitude.shape[2]} columns does not fit width {self.width}")
        self.register_buffer("magnitude", magnitude.detach().float().clone())
        self.register_buffer("color", color_matrix(), persistent=False)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.phase = nn.Parameter((torch.rand(batch, *magnitude.shape, generator=g) * 2 - 1) * math.pi)
        self.track = transparency
        self.register_buffer("grad_sum", torch.zeros(batch, 1, self.height, self.width))

    def spectrum(self) -> torch.Tensor:
        """``(B, 3, H, W // 2 + 1)`` complex: the fixed magnitude with the current phase."""
        m = self.magnitude.expand_as(self.phase)
        return torch.complex(m * torch.cos(self.phase), m * torch.sin(self.phase))

    def decoded(self) -> torch.Tensor:
        """``(B, 3, H, W)`` the image in the decorrelated space, before colour mixing and sigmoid."""
        return torch.fft.irfft2(self.spectrum(), s=(self.height, self.width), norm="ortho")

    def forward(self) -> torch.Tensor:
        img = torch.sigmoid(torch.einsum("ij,bjhw->bihw", self.color, self.decoded()))
        if self.track and img.requires_grad:
            img.register_hook(self._accumulate)
        return img

    def _accumulate(self, grad: torch.Tensor) -> None:
        self.grad_sum += grad.detach().abs().sum(1, keepdim=True)

    @torch.no_grad()
    def transparency_map(self) -> torch.Tensor:
        """``(B, 1, H, W)`` the accumulated absolute input gradient, scaled to [0, 1] per image."""
        peak = self.grad_sum.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self.grad_sum / peak

    def project(self) -> None:  # the sigmoid keeps it valid
        return None


def make_image(kind: str = "pixel", batch: int = 1, height: int = 32, width: int | None = None, spectrum: str = "auto",
               data_dir: str = "data", **kwargs) -> nn.Module:
    """``pixel``, ``fourier`` or ``maco`` image parameterization (a config-friendly factory).

    ``spectrum``/``data_dir``: where MACO's natural magnitude comes from and is cached (``spectrum.natural_magnitude``).
    """
    if kind == "pixel":
        return PixelImage(batch, height, width, **kwargs)
    if kind == "fourier":
        kwargs = {k: v for k, v in kwargs.items() if k in ("sd", "decay_power", "decorrelate", "seed")}
        return FourierImage(batch, height, width, **kwargs)
    if kind == "maco":
        from cnnlab.visualize.spectrum import natural_magnitude

        h, w = _size(height, width)
        kwargs = {k: v for k, v in kwargs.items() if k in ("seed", "transparency")}
        return MacoImage(natural_magnitude((h, w), spectrum, data_dir), batch, width=w, **kwargs)
    raise UserError(f"unknown image parameterization {kind!r}: use pixel, fourier or maco")
