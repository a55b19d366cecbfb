"""Colorization as self-supervised pretraining: predict every pixel's colour from its lightness.

The backbone sees one channel (Lab L or mean RGB); a hypercolumn head over several taps predicts
either hue/chroma histograms or a distribution over quantized Lab ab bins. Training samples K
random pixels per image (sparse hypercolumns); validation, test and ``cnnlab-colorize`` run the
same head densely. The trunk (backbone) is exported as ``trunk.pt`` with ``color_space`` = the
input space, for linear probes and visualizations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from cnnlab.color import convert, rgb_to_hue_chroma, rgb_to_lab
from cnnlab.colorization import bins as B
from cnnlab.colorization.decode import compose_lab, decode_ab, decode_hue_chroma, gray_from_input, lightness_from_input
from cnnlab.colorization.hypercolumn import (HypercolumnHead, TapNorm, dense_hypercolumns, gather_pixels, grid_pixels,
                                             pixel_centers, random_pixels, sample_hypercolumns)
from cnnlab.colorization.metrics import ColorizationMetrics
from cnnlab.colorization.prior import cached_ab_stats
from cnnlab.errors import UserError
from cnnlab.models.base import CnnlabModule, as_dict, make_backbone

log = logging.getLogger(__name__)

TARGETS = ("hue_chroma", "lab_bins")
INPUT_SPACES = ("L", "gray")
LAB_DEFAULTS = {"grid": 10, "neighbours": 10, "sigma": 5.0, "rebalance": 0.5, "temperature": 0.38, "prior_sigma": 5.0}


class Colorizer(CnnlabModule):
    """Hypercolumn colorization on a 1-channel backbone.

    ``training_step`` takes the data module's RGB batch in [0, 1] (``data.color_space=rgb``) and
    converts it on device into the input (``input_space``) and the colour targets.
    Logs ``{train,val,test}/loss`` and, for val/test, ``auc``/``auc_rebal``/``psnr`` of the prediction
    and of the trivial baselines (``auc_gray``, ``auc_rebal_gray``, ``psnr_prior``, ...).
    """

    method = "colorization"

    def __init__(
        self,
        backbone: dict,
        targets: str = "hue_chroma",
        input_space: str = "L",
        taps: Sequence[str] | None = None,
        samples_per_image: int = 128,
        sample_margin: int = 0,
        hidden: int = 1024,
        dropout: float = 0.5,
        hue_bins: int = 32,
        chroma_bins: int = 32,
        hue_weight: float = 5.0,
        hue_confidence: bool = True,
        lab: dict | None = None,
        prior_max_images: int = 10000,
        prior_cache: bool = True,
        dense_training: bool = False,
        eval_stride: int = 1,
        eval_chunk_pixels: int = 65536,
        panel_every_n_epochs: int = 1,
        panel_images: int = 8,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        compile: bool = False,
    ):
        super().__init__(optimizer, scheduler, compile)
        if targets not in TARGETS:
            raise UserError(f"unknown model.targets={targets!r}: choose one of {list(TARGETS)}")
        if input_space not in INPUT_SPACES:
            raise UserError(f"unknown model.input_space={input_space!r}: choose one of {list(INPUT_SPACES)}")
        lab = {**LAB_DEFAULTS, **(as_dict(lab) or {})}
        self.save_hyperparameters({
            "backbone": as_dict(backbone), "targets": targets, "input_space": input_space,
            "taps": list(taps) if taps else None, "samples_per_image": samples_per_image, "sample_margin": sample_margin,
            "hidden": hidden, "dropout": dropout, "hue_bins": hue_bins, "chroma_bins": chroma_bins, "hue_weight": hue_weight,
            "hue_confidence": hue_confidence, "lab": lab, "prior_max_images": prior_max_images, "prior_cache": prior_cache, "dense_training": dense_training,
            "eval_stride": eval_stride, "eval_chunk_pixels": eval_chunk_pixels,
            "panel_every_n_epochs": panel_every_n_epochs, "panel_images": panel_images,
            "optimizer": self.optimizer_cfg, "scheduler": self.scheduler_cfg, "compile": compile,
        })
        self.backbone = make_backbone(as_dict(backbone))
        if self.backbone.in_channels != 1:
            raise UserError(
                f"colorization feeds the backbone one lightness channel but it takes {self.backbone.in_channels}: "
                "set backbone.in_channels=1"
            )
        self.targets, self.input_space = targets, input_space
        self.taps = self.backbone.check_taps(list(taps) if taps else self.backbone.default_taps)
        if not self.taps:
            raise UserError(f"{self.backbone.arch} has no default taps: set model.taps to some of {self.backbone.tap_names}")
        shapes = self.backbone.tap_shapes(self.backbone._probe_size())
        channels = [shapes[t][0] for t in self.taps]
        self.tap_norm = TapNorm(channels)

        centers = B.ab_bin_centers(lab["grid"])
        q = centers.shape[0]
        out_dims = [hue_bins, chroma_bins] if targets == "hue_chroma" else [q]
        self.head = HypercolumnHead(sum(channels), out_dims, hidden=hidden, dropout=dropout)
        # the prior travels in the checkpoint: a loaded model decodes and evaluates without the data
        self.register_buffer("ab_centers", centers)
        self.register_buffer("ab_prior", torch.full((q,), 1.0 / q))
        self.register_buffer("class_weights", torch.ones(q))
        self.register_buffer("prior_mean_ab", torch.zeros(2))
        self.register_buffer("prior_ready", torch.tensor(False))
        self.metrics = nn.ModuleDict({s: ColorizationMetrics() for s in ("val", "test")})
        self._panels: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- prior
    def fit_prior(self, images: torch.Tensor, name: str = "data", cache_dir: str | Path | None = None) -> dict:
        """Set the ab prior, rebalancing weights and mean colour from uint8 RGB images ``(N, 3, H, W)``."""
        lab = self.hparams.lab
        stats = cached_ab_stats(images, self.ab_centers.cpu(), name, cache_dir, self.hparams.prior_max_images)
        prior = B.smooth_prior(stats["counts"], self.ab_centers.cpu(), lab["prior_sigma"])
        dev = self.ab_centers.device
        self.ab_prior.copy_(prior.to(dev))
        self.class_weights.copy_(B.rebalance_weights(prior, lab["rebalance"]).to(dev))
        self.prior_mean_ab.copy_(stats["mean_ab"].to(dev))
        self.prior_ready.fill_(True)
        return stats

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the bin lattice travels in the checkpoint: a model trained on another bin set (another
        # gamut sampling, another grid) decodes with the bins it was trained on
        state = checkpoint.get("state_dict", {})
        saved = state.get("ab_centers")
        if saved is None or saved.shape == self.ab_centers.shape:
            return
        if self.targets == "lab_bins":
            raise UserError(
                f"this checkpoint predicts {saved.shape[0]} Lab bins but model.lab.grid={self.hparams.lab['grid']} "
                f"gives {self.ab_centers.shape[0]} here: load it with the cnnlab version that trained it"
            )
        for name in ("ab_centers", "ab_prior", "class_weights"):
            setattr(self, name, torch.empty_like(state[name]))

    def setup(self, stage: str) -> None:
        if bool(self.prior_ready) or self._trainer is None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        splits = getattr(dm, "splits", None)
        if not splits or "train" not in splits:
            log.warning("no training images to compute the ab prior from: using a uniform prior")
            return
        h = dm.hparams
        cache = Path(h.data_dir) / "colorization" if self.hparams.prior_cache and h.get("data_dir") else None
        stats = self.fit_prior(splits["train"].images, f"{h.name}_{h.image_size}", cache)
        log.info("ab prior from %d training images (%.1f%% all gray)", stats["images"], 100 * stats["gray_fraction"])

    # ----------------------------------------------------------------------------- network
    def model_input(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB ``(B, 3, H, W)`` in [0, 1] -> the backbone's 1-channel input ``(B, 1, H, W)``."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise UserError(f"colorization needs RGB batches (B, 3, H, W) but got {tuple(rgb.shape)}: set data.color_space=rgb")
        return convert(rgb, self.input_space)

    def tap_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input ``(B, 1, H, W)`` -> normalized tap maps ``[(B, C_i, h_i, w_i)]`` in ``self.taps`` order."""
        feats = self.backbone.forward_taps(x, self.taps)
        return self.tap_norm([feats[t] for t in self.taps])

    def sparse_logits(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Input ``(B, 1, H, W)``, pixels ``(B, K, 2)`` -> logits ``(B, K, O)`` from sampled hypercolumns."""
        maps = self.tap_maps(x)
        cols = sample_hypercolumns(maps, pixel_centers(pixels, *x.shape[-2:]))
        return self.head(cols)

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``(B, 1, H, W)`` -> logits ``(B, O, H, W)`` at every pixel (1x1 convs over upsampled taps)."""
        return self.head.dense(dense_hypercolumns(self.tap_maps(x), x.shape[-2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``(B, 1, H, W)`` in [0, 1] -> colorized RGB ``(B, 3, H, W)`` in [0, 1]."""
        return self.decode(self.dense_logits(x), x)

    @torch.no_grad()
    def colorize(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """:meth:`forward` in chunks of about ``eval_chunk_pixels`` pixels (bounded memory)."""
        per = max(1, self.hparams.eval_chunk_pixels // (x.shape[-1] * x.shape[-2]))
        return torch.cat([self.decode(self.dense_logits(c), c, temperature) for c in x.split(per)])

    def decode(self, logits: torch.Tensor, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Dense logits ``(B, O, H, W)`` + input ``(B, 1, H, W)`` -> RGB ``(B, 3, H, W)``."""
        if self.targets == "hue_chroma":
            hue, chroma = self.head.split(logits, dim=1)
            return decode_hue_chroma(hue, chroma, x, self.input_space, self.hparams.get("hue_confidence", True))
        t = self.hparams.lab["temperature"] if temperature is None else temperature
        return compose_lab(lightness_from_input(x, self.input_space), decode_ab(logits, self.ab_centers, t))

    # ----------------------------------------------------------------------------- loss
    def targets_of(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB ``(B, 3, H, W)`` -> (target map ``(B, T, H, W)``, colour mask ``(B,)``).

        ``hue_chroma``: T = 2 (hue, chroma); ``lab_bins``: T = 2 (a, b). All-gray images are masked.
        """
        lab = rgb_to_lab(rgb)
        colour = B.image_has_colour(lab[:, 1:])
        if self.targets == "hue_chroma":
            hue, chroma = rgb_to_hue_chroma(rgb)
            return torch.stack([hue, chroma], 1), colour
        return lab[:, 1:], colour

    def loss_at(self, logits: torch.Tensor, targets: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, O)``, targets ``(N, 2)`` at the same pixels, colour mask ``(N,)`` -> scalar loss."""
        logits, targets = logits.float(), targets.float()
        if self.targets == "hue_chroma":
            hue_logits, chroma_logits = self.head.split(logits)
            return B.hue_chroma_loss(hue_logits, chroma_logits, targets[:, 0], targets[:, 1],
                                     colour.float(), self.hparams.hue_weight)
        lab = self.hparams.lab
        soft = B.soft_encode(targets, self.ab_centers, lab["neighbours"], lab["sigma"])
        weight = B.pixel_weights(targets, self.ab_centers, self.class_weights, colour)
        return B.soft_cross_entropy(logits, soft, weight)

    def sparse_loss(self, rgb: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss on RGB ``(B, 3, H, W)`` at ``pixels (B, K, 2)`` (K random ones if None)."""
        x = self.model_input(rgb)
        b, _, h, w = x.shape
        if pixels is None:
            pixels = random_pixels(b, self.hparams.samples_per_image, h, w, self.hparams.sample_margin, device=x.device)
        logits = self.sparse_logits(x, pixels)
        tmap, colour = self.targets_of(rgb)
        k = pixels.shape[1]
        return self.loss_at(logits.reshape(b * k, -1), gather_pixels(tmap, pixels).reshape(b * k, -1),
                            colour.repeat_interleave(k))

    def dense_loss(self, rgb: torch.Tensor) -> torch.Tensor:
        """The loss at every pixel from the textbook dense hypercolumn (for comparison with sparse training)."""
        x = self.model_input(rgb)
        logits = self.dense_logits(x)
        tmap, colour = self.targets_of(rgb)
        hw = x.shape[-1] * x.shape[-2]
        return self.loss_at(logits.flatten(2).transpose(1, 2).reshape(-1, logits.shape[1]),
                            tmap.flatten(2).transpose(1, 2).reshape(-1, 2), colour.repeat_interleave(hw))

    # ----------------------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx):
        rgb = batch[0] if isinstance(batch, (tuple, list)) else batch
        loss = self.dense_loss(rgb) if self.hparams.dense_training else self.sparse_loss(rgb)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=rgb.shape[0])
        return loss

    def baselines(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trivial predictions for input ``(B, 1, H, W)``: gray (ab = 0) and the prior's mean ab."""
        light = lightness_from_input(x, self.input_space)
        return {"gray": compose_lab(light, torch.zeros_like(self.prior_mean_ab)), "prior": compose_lab(light, self.prior_mean_ab)}

    def inverse_prior_weights(self, ab: torch.Tensor) -> torch.Tensor:
        """True ab ``(B, 2, H, W)`` -> ``(B, H, W)``: 1 / prior of each pixel's nearest bin (for the rebalanced AuC)."""
        flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        p = self.ab_prior[B.nearest_bin(flat, self.ab_centers)].clamp_min(1e-6)
        return (1.0 / p).reshape(ab.shape[0], *ab.shape[-2:])

    def _eval_step(self, batch, batch_idx: int, stage: str) -> None:
        rgb = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = self.model_input(rgb)
        h, w = x.shape[-2:]
        tmap, colour = self.targets_of(rgb)
        # loss and metrics on a regular grid of pixels (every pixel at eval_stride=1: equal to dense inference)
        stride = max(1, self.hparams.eval_stride)
        pixels = grid_pixels(h, w, stride, device=x.device)
        gh, gw = len(range(stride // 2, h, stride)), len(range(stride // 2, w, stride))
        per = max(1, self.hparams.eval_chunk_pixels // len(pixels))
        loss_sum, preds = 0.0, []
        for sl in torch.arange(x.shape[0], device=x.device).split(per):
            pix = pixels.expand(len(sl), -1, -1)
            logits = self.sparse_logits(x[sl], pix)  # (b, P, O)
            tg = gather_pixels(tmap[sl], pix)
            loss_sum = loss_sum + len(sl) * self.loss_at(logits.reshape(-1, logits.shape[-1]), tg.reshape(-1, 2),
                                                          colour[sl].repeat_interleave(len(pixels)))
            grid_logits = logits.transpose(1, 2).reshape(len(sl), -1, gh, gw)
            preds.append(self.decode(grid_logits, self._at_grid(x[sl], pixels, gh, gw)))
        pred = torch.cat(preds)
        self.log(f"{stage}/loss", loss_sum / x.shape[0], prog_bar=stage == "val", on_epoch=True, batch_size=x.shape[0])
        x_grid = self._at_grid(x, pixels, gh, gw)
        self.metrics[stage].update(pred, self._at_grid(rgb, pixels, gh, gw), self.baselines(x_grid),
                                   self.inverse_prior_weights if bool(self.prior_ready) else None)
        if batch_idx == 0:
            n = self.hparams.panel_images
            full = pred[:n] if stride == 1 else self.colorize(x[:n])
            self._panels[stage] = torch.stack([gray_from_input(x[:n], self.input_space).expand(-1, 3, -1, -1),
                                               full, rgb[:n]], 1).flatten(0, 1).detach().cpu()

    @staticmethod
    def _at_grid(img: torch.Tensor, pixels: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """``(B, C, H, W)`` at grid ``pixels (P, 2)`` -> ``(B, C, gh, gw)``."""
        if pixels.shape[0] == img.shape[-1] * img.shape[-2]:
            return img
        return gather_pixels(img, pixels.expand(img.shape[0], -1, -1)).transpose(1, 2).reshape(img.shape[0], -1, gh, gw)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, batch_idx, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "auc")
        panels = self._panels.pop(stage, None)
        every = max(1, self.hparams.panel_every_n_epochs)
        if panels is not None and not self.trainer.sanity_checking and (stage == "test" or self.current_epoch % every == 0):
            from cnnlab.tracking import log_image_grid

            # each row: gray input | prediction | ground truth, two images per row
            log_image_grid(self.trainer, f"{stage}/panels", panels, nrow=6, caption="gray | prediction | truth")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ----------------------------------------------------------------------------- export
    def trunk_color_space(self) -> str:
        return self.input_space
