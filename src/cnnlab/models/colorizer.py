"""Colorization as self-supervised pretraining: predict every pixel's colour from its lightness.

The backbone sees one channel (Lab L or mean RGB); a hypercolumn head over several taps predicts
either hue/chroma histograms or a distribution over quantized Lab ab bins. Training samples K
random pixels per image (sparse hypercolumns); validation, test and ``cnnlab-colorize`` run the
same head on every pixel, in bands of at most ``eval_chunk_pixels`` pixels. The trunk (backbone) is
exported as ``trunk.pt`` with ``color_space`` = the input space, for linear probes and visualizations.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.color import lab_to_rgb
from cnnlab.colorization import bins as B
from cnnlab.colorization.batch import ColourBatch
from cnnlab.colorization.decode import compose_lab, decode_ab, decode_hue_chroma, gray_from_input, lightness_from_input
from cnnlab.colorization.metrics import ColorizationMetrics
from cnnlab.colorization.prior import BindColorizerToData, cached_ab_stats
from cnnlab.errors import UserError
from cnnlab.hypercolumn import HypercolumnModel, gather_pixels, grid_map, grid_pixels, random_pixels
from cnnlab.models.base import StagedModule, as_dict, make_backbone

TARGETS = ("hue_chroma", "lab_bins")
INPUT_SPACES = ("L", "gray")


@functools.cache
def lab_defaults() -> dict:
    """``lab`` of conf/model/colorization.yaml: the one home of the Lab-bin settings (grid, temperature, ...)."""
    from cnnlab.config import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "model" / "colorization.yaml").lab)


class Colorizer(HypercolumnModel, StagedModule):
    """Hypercolumn colorization on a 1-channel backbone.

    Steps take the data module's batch in RGB or Lab (``data.color_space``; a :class:`ColourBatch`
    converts it at most once into the input, the targets and the truth of the metrics).
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
        samples_per_image: int = 128, sample_margin: int = 0,
        hidden: int = 1024, dropout: float = 0.5,
        hue_bins: int = 32, chroma_bins: int = 32, hue_weight: float = 5.0, hue_confidence: bool = True,
        lab: dict | None = None,
        prior_max_images: int = 10000, prior_cache: bool = True,
        dense_training: bool = False,
        eval_stride: int = 1, eval_chunk_pixels: int = 65536,
        panel_every_n_epochs: int = 1, panel_images: int = 8,
        optimizer: dict | None = None, scheduler: dict | None = None, compile: bool = False,
    ):
        hparams = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # every argument, as given
        super().__init__(optimizer, scheduler, compile)
        if targets not in TARGETS:
            raise UserError(f"unknown model.targets={targets!r}: choose one of {list(TARGETS)}")
        if input_space not in INPUT_SPACES:
            raise UserError(f"unknown model.input_space={input_space!r}: choose one of {list(INPUT_SPACES)}")
        lab = {**lab_defaults(), **(as_dict(lab) or {})}
        self.save_hyperparameters({**hparams, "backbone": as_dict(backbone), "taps": list(taps) if taps else None,
                                   "lab": lab, "optimizer": self.optimizer_cfg, "scheduler": self.scheduler_cfg})
        self.backbone = make_backbone(as_dict(backbone))
        if self.backbone.in_channels != 1:
            raise UserError(
                f"colorization feeds the backbone one lightness channel but it takes {self.backbone.in_channels}: "
                "set backbone.in_channels=1"
            )
        self.targets, self.input_space = targets, input_space
        #: what the data module delivers (rgb | lab); set from the data module before any step
        self.batch_space = "rgb"
        centers = B.ab_bin_centers(lab["grid"])
        q = centers.shape[0]
        self.build_hypercolumn(taps, [hue_bins, chroma_bins] if targets == "hue_chroma" else [q], hidden, dropout)
        # the prior travels in the checkpoint: a loaded model decodes and evaluates without the data
        self.register_buffer("ab_centers", centers)
        self.register_buffer("ab_prior", torch.full((q,), 1.0 / q))
        self.register_buffer("class_weights", torch.ones(q))
        self.register_buffer("prior_mean_ab", torch.zeros(2))
        self.register_buffer("prior_ready", torch.tensor(False))
        self.metrics = nn.ModuleDict({s: ColorizationMetrics() for s in ("val", "test")})
        self._panels: dict[str, torch.Tensor] = {}

    def configure_callbacks(self):
        return [BindColorizerToData()]

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
        super().on_load_checkpoint(checkpoint)
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

    # ----------------------------------------------------------------------------- network
    def colours(self, images: torch.Tensor | ColourBatch) -> ColourBatch:
        """A batch in the data module's colour space -> its :class:`ColourBatch` (converted at most once)."""
        return images if isinstance(images, ColourBatch) else ColourBatch(images, self.batch_space, self.input_space)

    def model_input(self, images: torch.Tensor | ColourBatch) -> torch.Tensor:
        """A batch ``(B, 3, H, W)`` -> the backbone's 1-channel input ``(B, 1, H, W)``."""
        return self.colours(images).x

    def predict_lab(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Input ``(B, 1, H, W)`` -> predicted Lab ``(B, 3, H, W)`` (the head on bands of :meth:`grid_logits`)."""
        w = x.shape[-1]
        return torch.cat([self.decode(grid_map(logits, w), grid_map(gather_pixels(x, pix), w), temperature)
                          for pix, logits in self.grid_logits(x)], 2)

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Input ``(B, 1, H, W)`` in [0, 1] -> colorized RGB ``(B, 3, H, W)`` in [0, 1] (:meth:`predict_lab`)."""
        return lab_to_rgb(self.predict_lab(x, temperature))

    @torch.no_grad()
    def colorize(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """:meth:`forward` without gradients."""
        return self(x, temperature)

    def decode(self, logits: torch.Tensor, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Dense logits ``(B, O, H, W)`` + input ``(B, 1, H, W)`` -> Lab ``(B, 3, H, W)``."""
        if self.targets == "hue_chroma":
            hue, chroma = self.head.split(logits, dim=1)
            return decode_hue_chroma(hue, chroma, x, self.input_space, self.hparams.get("hue_confidence", True))
        t = self.hparams.lab["temperature"] if temperature is None else temperature
        return compose_lab(lightness_from_input(x, self.input_space), decode_ab(logits, self.ab_centers, t))

    # ----------------------------------------------------------------------------- loss
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

    def _pixel_loss(self, logits: torch.Tensor, cb: ColourBatch, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, O)`` at ``pixels (B, K, 2)`` of ``cb`` -> the loss there."""
        b, k = pixels.shape[:2]
        targets = gather_pixels(cb.targets(self.targets), pixels)
        return self.loss_at(logits.reshape(b * k, -1), targets.reshape(b * k, -1), cb.colour.repeat_interleave(k))

    def sparse_loss(self, images: torch.Tensor | ColourBatch, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss on a batch ``(B, 3, H, W)`` at ``pixels (B, K, 2)`` (K random ones if None)."""
        cb = self.colours(images)
        b, _, h, w = cb.x.shape
        if pixels is None:
            pixels = random_pixels(b, self.hparams.samples_per_image, h, w, self.hparams.sample_margin, device=cb.x.device)
        return self._pixel_loss(self.sparse_logits(cb.x, pixels), cb, pixels)

    def dense_loss(self, images: torch.Tensor | ColourBatch) -> torch.Tensor:
        """The loss at every pixel from the textbook dense hypercolumn (for comparison with sparse training)."""
        cb = self.colours(images)
        b, _, h, w = cb.x.shape
        pixels = grid_pixels(h, w, device=cb.x.device).expand(b, -1, -1)
        return self._pixel_loss(self.dense_logits(cb.x).flatten(2).transpose(1, 2), cb, pixels)

    # ----------------------------------------------------------------------------- steps
    def _step(self, batch, stage: str):
        cb = self.colours(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if stage != "train":
            return self._evaluate(cb, stage)
        loss = self.dense_loss(cb) if self.hparams.dense_training else self.sparse_loss(cb)
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=cb.x.shape[0])
        return loss

    def baselines(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trivial predictions (RGB) for input ``(B, 1, H, W)``: gray (ab = 0) and the prior's mean ab."""
        light = lightness_from_input(x, self.input_space)
        return {"gray": lab_to_rgb(compose_lab(light, torch.zeros_like(self.prior_mean_ab))),
                "prior": lab_to_rgb(compose_lab(light, self.prior_mean_ab))}

    def inverse_prior_weights(self, ab: torch.Tensor) -> torch.Tensor:
        """True ab ``(B, 2, H, W)`` -> ``(B, H, W)`` weights of the rebalanced AuC."""
        return B.inverse_prior_weights(ab, self.ab_prior, self.ab_centers)

    def _evaluate(self, cb: ColourBatch, stage: str) -> None:
        """Loss and metrics on a regular grid of pixels (every pixel at eval_stride=1: dense inference), in bands."""
        x = cb.x
        b, _, h, w = x.shape
        stride = max(1, self.hparams.eval_stride)
        gw = len(range(stride // 2, w, stride))
        loss_sum, bands = 0.0, []
        for pix, logits in self.grid_logits(x, stride):
            loss_sum = loss_sum + pix.shape[1] * self._pixel_loss(logits, cb, pix)
            bands.append(self.decode(grid_map(logits, gw), grid_map(gather_pixels(x, pix), gw)))
        grid = grid_pixels(h, w, stride, x.device).expand(b, -1, -1)
        at_grid = lambda t: grid_map(gather_pixels(t, grid), gw)  # noqa: E731  (B, C, H, W) -> (B, C, gh, gw)
        pred = lab_to_rgb(torch.cat(bands, 2))
        self.log(f"{stage}/loss", loss_sum / grid.shape[1], prog_bar=stage == "val", on_epoch=True, batch_size=b)
        self.metrics[stage].update(pred, at_grid(cb.rgb), self.baselines(at_grid(x)),
                                   self.inverse_prior_weights if bool(self.prior_ready) else None, true_ab=at_grid(cb.ab))
        if stage not in self._panels:  # the epoch's first batch
            n = self.hparams.panel_images
            full = pred[:n] if stride == 1 else self.colorize(x[:n])
            self._panels[stage] = torch.stack([gray_from_input(x[:n], self.input_space).expand(-1, 3, -1, -1),
                                               full, cb.rgb[:n]], 1).flatten(0, 1).detach().cpu()

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
