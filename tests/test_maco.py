"""Properties of the MACO parameterization, the natural-spectrum cache and the spectrum distance (synthetic inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import UserError
from cnnlab.hooks import hook_count
from cnnlab.visualize import objectives as O
from cnnlab.visualize.experiments import Context, featviz
from cnnlab.visualize.module import ImageOptimization, run_optimization
from cnnlab.visualize.param import MacoImage, make_image
from cnnlab.visualize.spectrum import mean_magnitude, natural_magnitude, radial_log_power, spectrum_distance
from cnnlab.visualize.transforms import lucid_transforms
from tests.test_visualize import net  # noqa: F401 - the synthetic-trained VGG (one_thread comes from conftest)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def _smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Images with a 1/f-like spectrum: upsampled noise at several scales (natural-looking statistics)."""
    g = torch.Generator().manual_seed(seed)
    x = sum(torch.nn.functional.interpolate(torch.randn(n, 3, max(1, h // k), max(1, w // k), generator=g), size=(h, w),
                                            mode="bilinear", align_corners=False) for k in (1, 2, 4, 8))
    return torch.sigmoid(x / 4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of PNGs to estimate a natural spectrum from."""
    d = tmp_path_factory.mktemp("naturals")
    for i, img in enumerate(_smooth_images(4, 96, 96)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"img{i}.png")
    return d


def test_maco_keeps_the_magnitude_fixed_while_the_phase_changes(net):  # noqa: F811
    magnitude = mean_magnitude(_smooth_images(8, 32, 32))
    img = MacoImage(magnitude, batch=2, seed=0)
    phase0 = img.phase.detach().clone()
    mod = ImageOptimization(net, img, O.class_logit([1, 4]), lucid_transforms(32, out_size=32), "adam", 0.1)
    run_optimization(mod, 8, progress=False)
    assert (img.phase.detach() - phase0).abs().max() > 0.01  # the phase moved
    assert torch.equal(img.magnitude, magnitude)  # the magnitude is a buffer, never updated
    assert torch.allclose(img.spectrum().abs(), magnitude.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-7)
    # the decoded image really has that magnitude: columns 1 .. W/2 - 1 survive the real inverse FFT unchanged
    spec = torch.fft.rfft2(img.decoded().detach(), norm="ortho")
    assert torch.allclose(spec.abs()[..., 1:-1], magnitude.expand(2, -1, -1, -1)[..., 1:-1], rtol=1e-4, atol=1e-5)
    assert hook_count(net) == 0


def test_an_objective_improves_under_maco(net):  # noqa: F811
    magnitude = mean_magnitude(_smooth_images(8, 32, 32))
    img = MacoImage(magnitude, batch=3, seed=1)
    obj = O.class_logit([0, 3, 7])
    with torch.no_grad():
        start = float(obj({"logits": net(img())}))
    mod = ImageOptimization(net, img, obj, lucid_transforms(32, out_size=32), "adam", 0.1, seed=0)
    run_optimization(mod, 30, progress=False)
    with torch.no_grad():
        end = float(obj({"logits": net(mod.result())}))
    assert end < start - 1.0  # the mean class logit rose by more than one unit


@pytest.mark.parametrize("h,w", [(32, 32), (20, 27)])
def test_transparency_map_has_the_image_size(net, h, w):  # noqa: F811
    img = MacoImage(torch.ones(3, h, w // 2 + 1), batch=2, seed=0, width=w)
    assert img().shape == (2, 3, h, w)
    mod = ImageOptimization(net, img, O.channel("conv2_1", [0, 1]), lucid_transforms(h, out_size=h), "adam", 0.05)
    run_optimization(mod, 3, progress=False)
    alpha = img.transparency_map()
    assert alpha.shape == (2, 1, h, w)
    assert alpha.min() >= 0 and torch.allclose(alpha.flatten(1).amax(1), torch.ones(2))


def test_natural_magnitude_is_cached_by_size_and_source(folder, tmp_path):
    m = natural_magnitude((24, 30), str(folder), cache_dir=str(tmp_path))
    assert m.shape == (3, 24, 16)
    cached = list((tmp_path / "spectra").glob("*.pt"))
    assert [p.name for p in cached] == [f"dir-{folder.name}_24x30.pt"]
    assert torch.equal(natural_magnitude((24, 30), str(folder), cache_dir=str(tmp_path)), m)
    natural_magnitude(16, str(folder), cache_dir=str(tmp_path))
    assert len(list((tmp_path / "spectra").glob("*.pt"))) == 2
    with pytest.raises(UserError, match="no images in"):
        natural_magnitude(16, str(tmp_path / "empty"), cache_dir=str(tmp_path))


def test_spectrum_distance_separates_natural_images_from_noise():
    natural = _smooth_images(16, 32, 32, seed=1)
    reference = radial_log_power(_smooth_images(16, 32, 32, seed=2)).mean(0)
    noise = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert spectrum_distance(natural, reference).mean() < 0.5 * spectrum_distance(noise, reference).mean()


def test_maco_is_one_name_among_the_parameterizations(folder, tmp_path):
    img = make_image("maco", 2, 16, 18, spectrum=str(folder), data_dir=str(tmp_path), seed=0)
    assert isinstance(img, MacoImage) and img().shape == (2, 3, 16, 18)
    with pytest.raises(UserError, match="pixel, fourier or maco"):
        make_image("wavelet")


def test_featviz_with_maco_writes_image_and_metrics(net, folder, tmp_path):  # noqa: F811
    ctx = Context(network=net, out_dir=tmp_path, data_dir=str(tmp_path), progress=False)
    out = featviz(ctx, layer="conv2_1", units=[0, 1], image="maco", steps=4, spectrum=str(folder))
    assert (tmp_path / "images" / "featviz_maco.png").is_file()
    assert out["spectrum_distance"] > 0 and set(out) >= {"objective", "objective/conv2_1:0", "objective_end"}
