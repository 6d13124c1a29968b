"""Reading images: every kind of input becomes an upright (H, W, 3) uint8 array, bad ones a
clear ImageReadError."""

import numpy as np
import pytest
from PIL import Image

from mask2former.utils.image_io import ImageReadError, expand_image_inputs, read_image


def _rgb_pattern(height=6, width=10):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trip_and_bgr_order(tmp_path):
    image = _rgb_pattern()
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    rgb = read_image(path, "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 10, 3)
    np.testing.assert_array_equal(rgb, image)
    np.testing.assert_array_equal(read_image(str(path), "BGR"), image[:, :, ::-1])


def test_numpy_and_pil_inputs():
    image = _rgb_pattern()
    np.testing.assert_array_equal(read_image(image, "RGB"), image)
    np.testing.assert_array_equal(read_image(Image.fromarray(image), "RGB"), image)
    bgr_input = image[:, :, ::-1]
    np.testing.assert_array_equal(read_image(bgr_input, "RGB", array_channel_order="BGR"), image)


def test_grayscale_file_and_arrays(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    for source in (path, gray, gray[:, :, None], Image.fromarray(gray)):
        out = read_image(source, "RGB")
        assert out.shape == (6, 10, 3)
        for channel in range(3):
            np.testing.assert_array_equal(out[:, :, channel], gray)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:2, :, 3] = 255  # top half opaque
    rgba[2:, :, 3] = 0  # bottom half transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    for source in (path, rgba):
        out = read_image(source, "RGB")
        assert out.shape == (4, 4, 3)
        np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
        np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    for source in (path, values):
        out = read_image(source, "RGB")
        assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
        np.testing.assert_array_equal(out[0, :, 1], [0, 100, 255, 7])
    # a 16-bit colour PNG written by OpenCV
    cv2 = pytest.importorskip("cv2")
    colour = np.zeros((2, 2, 3), dtype=np.uint16)
    colour[..., 2] = 65535  # red in BGR order
    colour[..., 0] = 257 * 50  # some blue
    colour_path = tmp_path / "deep_colour.png"
    cv2.imwrite(str(colour_path), colour)
    np.testing.assert_array_equal(read_image(colour_path, "RGB")[0, 0], [255, 0, 50])


def test_float_arrays():
    out = read_image(np.full((2, 3), 0.5, dtype=np.float32), "RGB")
    assert out.dtype == np.uint8
    assert np.all(out == 128)
    out = read_image(np.array([[[10.2, 200.0, 300.0]]], dtype=np.float64), "RGB")
    np.testing.assert_array_equal(out, [[[10, 200, 255]]])


def test_exif_orientation_is_applied(tmp_path):
    # Stored image: 4 rows x 8 columns, red block in the top-left corner.
    stored = np.zeros((4, 8, 3), dtype=np.uint8)
    stored[:2, :2] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=100)
    out = read_image(path, "RGB")
    # Displayed upright: 8 rows x 4 columns; the stored top-left corner is now top-right.
    assert out.shape == (8, 4, 3)
    assert out[0, 3, 0] > 200 and out[0, 3, 1] < 60
    assert out[0, 0, 0] < 60
    assert out[7, 3, 0] < 60


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[1, 2, 3]]], dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(read_image(path, "BGR"), [[[3, 2, 1]]])


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageReadError, match="nope.jpg: no such file; check the path"):
        read_image(path)


def test_unsupported_format_names_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes.txt: unsupported format '.txt'.*convert"):
        read_image(path)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(ImageReadError, match=r"broken.jpg: .*(corrupt|truncated).*re-"):
        read_image(path)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_rgb_pattern(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(path)


def test_directory_and_bad_arrays(tmp_path):
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="shape"):
        read_image(np.zeros((2, 3, 3, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="empty"):
        read_image(np.zeros((0, 3, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(12)


def test_expand_image_inputs(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    folder = expand_image_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in folder] == ["a.jpg", "b.png"]
    globbed = expand_image_inputs([str(tmp_path / "*.png"), str(tmp_path / "b.png")])
    assert globbed == [str(tmp_path / "b.png")]
    missing = str(tmp_path / "missing.jpg")
    assert expand_image_inputs([missing]) == [missing]
