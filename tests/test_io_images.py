"""cnnlab.io.images: every PIL mode a user may hand in reads as the RGB a viewer shows (synthetic images)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import UserError
from cnnlab.io.images import open_image, png_text, read_image, rgb_image, write_png


def _ramp(h=6, w=8):
    return np.linspace(0.0, 1.0, h * w).reshape(h, w)


def _save(im: Image.Image, path, **kwargs):
    im.save(path, **kwargs)
    return path


def test_16_bit_grayscale_keeps_its_tones(tmp_path):
    ramp = _ramp()
    path = _save(Image.fromarray((ramp * 65535).astype(np.uint16)), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # what PIL opens it as: I;16 (or I)
    rgb = read_image(path)
    assert rgb.shape == (1, 3, 6, 8)
    assert torch.allclose(rgb[0, 0], torch.from_numpy(ramp).float(), atol=1 / 255)
    assert torch.equal(rgb[0, 0], rgb[0, 1]) and torch.equal(rgb[0, 1], rgb[0, 2])
    # and an image "I" holding 16-bit values, as some PIL versions and TIFF writers give
    big = Image.fromarray((ramp * 65535).astype(np.int32), "I")
    assert np.allclose(np.asarray(rgb_image(_save(big, tmp_path / "g32.tif")))[..., 0] / 255, ramp, atol=1 / 255)


def test_float_grayscale_in_unit_range(tmp_path):
    ramp = _ramp().astype(np.float32)
    rgb = read_image(_save(Image.fromarray(ramp, "F"), tmp_path / "f.tif"))
    assert torch.allclose(rgb[0, 2], torch.from_numpy(ramp), atol=1 / 255)


def test_palette_rgba_la_and_cmyk(tmp_path):
    colours = np.array([[200, 30, 40], [10, 220, 90]], dtype=np.uint8)
    index = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    pal = Image.fromarray(index, "P")
    pal.putpalette(colours.flatten().tolist() + [0] * (768 - 6))
    assert np.array_equal(np.asarray(rgb_image(_save(pal, tmp_path / "p.png"))), colours[index])
    # transparent pixels are composited on white, opaque ones keep their colour
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 30, 40, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1] = (0, 0, 0, 128)
    out = np.asarray(rgb_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))).astype(int)
    assert out[0, 0].tolist() == [200, 30, 40] and out[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[1] - 127) <= 2)  # half-transparent black on white: mid gray
    la = Image.fromarray(np.stack([np.full((2, 2), 60, np.uint8), np.array([[255, 0], [255, 0]], np.uint8)], -1), "LA")
    out = np.asarray(rgb_image(_save(la, tmp_path / "la.png")))
    assert out[0, 0].tolist() == [60] * 3 and out[0, 1].tolist() == [255] * 3
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red ink-wise
    out = np.asarray(rgb_image(_save(cmyk, tmp_path / "c.jpg", quality=100))).astype(int)
    assert out.shape == (2, 3, 3) and (out[..., 0] > 200).all() and (out[..., 1:] < 60).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, :] = 255  # a white top row
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = _save(im, tmp_path / "o.png", exif=exif)
    up = np.asarray(rgb_image(path))
    assert up.shape == (6, 4, 3)  # portrait once upright
    assert up[:, -1].min() == 255 and up[:, 0].max() == 0  # the top row is now the right column


def test_bytes_source_and_one_line_errors(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 5), 90, np.uint8), "L").save(buf, format="PNG")
    assert rgb_image(io.BytesIO(buf.getvalue())).size == (5, 3)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buf.getvalue()[:40])
    for path, message in ((bad, "not a readable image"), (truncated, "not a readable image"),
                          (tmp_path / "missing.png", "does not exist")):
        with pytest.raises(UserError, match=message) as exc:
            open_image(path)
        assert "\n" not in str(exc.value)
    assert read_image(_save(Image.new("RGB", (40, 20)), tmp_path / "r.png"), size=10).shape == (1, 3, 10, 20)


def test_write_png_round_trip_with_text(tmp_path):
    img = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    path = write_png(tmp_path / "out.png", img, text={"source": "a.jpg"})
    assert png_text(path) == {"source": "a.jpg"}
    assert (read_image(path) - img).abs().max() <= 0.5 / 255 + 1e-6
    assert png_text(tmp_path / "missing.png") == {} and not list(tmp_path.glob(".*.tmp"))
