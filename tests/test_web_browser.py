"""demo/app.py in a real browser: Debian's Chromium, driven by Playwright, on a tiny checkpoint.

Upload an image, choose each task and the threshold, check the overlay's size and the segment
legend, download the results and compare them with the command-line demo's files for the same
image, upload a corrupt file and then a good one, and segment a clip in the video tab.
"""

import json
import os

import numpy as np
import pytest
from helpers import ROOT, assert_same_json, write_clip, write_random_png
from helpers import TINY_CONFIG as CONFIG
from PIL import Image

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -r requirements.txt")
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the browser test needs playwright: pip install -r requirements.txt",
)

from mask2former.apps import browser, cli  # noqa: E402
from mask2former.utils.visualization import TASKS  # noqa: E402

APP = os.path.join(ROOT, "demo", "app.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.find_chromium() is None, reason=browser.CHROMIUM_INSTALL_HINT),
]


def _overlay_size(page, previous_source):
    """(width, height) of the result picture, once a new one has loaded."""
    page.wait_for_function(
        "previous => { const img = document.querySelector('#overlay img');"
        " return img && img.src !== previous && img.complete && img.naturalWidth > 0; }",
        arg=previous_source,
        timeout=30_000,
    )
    return tuple(
        page.eval_on_selector("#overlay img", "img => [img.naturalWidth, img.naturalHeight]")
    )


def _overlay_source(page):
    images = page.locator("#overlay img")
    return images.first.get_attribute("src") if images.count() else None


def _download_all(page, folder):
    saved = {}
    links = page.locator("#downloads a[download]")
    for index in range(links.count()):
        with page.expect_download() as download:
            links.nth(index).click()
        name = download.value.suggested_filename
        download.value.save_as(os.path.join(folder, name))
        saved[name] = os.path.join(folder, name)
    return saved


def test_web_demo_in_chromium(weights, tmp_path):
    photo = write_random_png(tmp_path / "photo.png", 90, 120, seed=0)
    second = write_random_png(tmp_path / "second.png", 64, 80, seed=1)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    arguments = ["--config-file", CONFIG, "--confidence-threshold", "0.1"]
    arguments += ["--opts", "MODEL.WEIGHTS", weights]
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    log = str(tmp_path / "app.log")

    with browser.running_web_demo(APP, arguments, log_path=log, env=env) as url:
        with sync_api.sync_playwright() as playwright:
            context = browser.launch_chromium(
                playwright,
                str(tmp_path / "profile"),
                accept_downloads=True,
                viewport={"width": 1280, "height": 1000},
            )
            try:
                page = context.new_page()
                page.goto(url)
                assert "circle, triangle, square" in page.inner_text("#model-info")
                assert "cpu" in page.inner_text("#model-info")

                previous = _overlay_source(page)
                browser.upload(page, "image-input", photo)
                for task in TASKS:
                    radio = page.locator("#image-task").get_by_role("radio", name=task)
                    if not radio.is_checked():
                        radio.check()
                    status = browser.wait_for_status(
                        page, "image-status", f"{task.capitalize()} segmentation of photo.png"
                    )
                    assert "s per image on cpu" in status
                    assert _overlay_size(page, previous) == (120, 90), task
                    previous = _overlay_source(page)
                    legend = page.locator("#segments .legend-item")
                    assert legend.count() > 0, task
                    legend.first.click()
                    browser.wait_for_status(page, "selected-segment", "pixels")
                    assert legend.first.inner_text() in page.inner_text("#selected-segment")
                    if task == "instance":  # no instance scores 1; then back to 0.1
                        threshold = page.locator("#image-threshold input[type=number]")
                        threshold.fill("1")
                        threshold.blur()
                        browser.wait_for_status(page, "image-status", "; 0 segments.")
                        assert legend.count() == 0
                        threshold.fill("0.1")
                        threshold.blur()
                        assert browser.wait_for_status(page, "image-status", status) == status
                        previous = _overlay_source(page)

                downloaded = _download_all(page, tmp_path / "web")
                command_line = tmp_path / "cli"
                cli_args = [
                    "--config-file",
                    CONFIG,
                    "--input",
                    photo,
                    "--output",
                    str(command_line),
                ]
                cli_args += ["--confidence-threshold", "0.1", "--opts", "MODEL.WEIGHTS", weights]
                report = cli.run_demo(
                    cli.build_argument_parser().parse_args(cli_args), progress=False
                )
                assert not report.failures
                names = [
                    "photo.instances.json",
                    "photo.panoptic.json",
                    "photo.panoptic.png",
                    "photo.semantic.png",
                ]
                assert sorted(downloaded) == names
                for name in names:
                    if name.endswith(".json"):
                        with open(downloaded[name]) as web, open(command_line / name) as ours:
                            # floats (scores) up to float rounding between two processes
                            assert_same_json(
                                json.load(ours), json.load(web), name, rel=1e-5, abs=1e-6
                            )
                    else:
                        np.testing.assert_array_equal(
                            np.asarray(Image.open(downloaded[name])),
                            np.asarray(Image.open(command_line / name)),
                        )
                with open(downloaded["photo.instances.json"]) as f:
                    assert len(json.load(f)) > 0, "instances to compare"
                page.screenshot(path=str(tmp_path / "web-demo.png"), full_page=True)

                browser.upload(page, "image-input", str(corrupt))
                status = browser.wait_for_status(page, "image-status", "Error")
                assert "corrupt.jpg: cannot decode the image" in status
                assert page.locator("#overlay img").count() == 0
                browser.upload(page, "image-input", second)
                browser.wait_for_status(page, "image-status", "segmentation of second.png")
                assert _overlay_size(page, previous) == (80, 64)

                page.get_by_role("tab", name="Video").click()
                browser.upload(page, "video-input", write_clip(tmp_path / "clip.mp4", 3))
                page.get_by_role("button", name="Segment the video").click()
                status = browser.wait_for_status(page, "video-status", "per frame")
                assert "3 frames" in status
                page.wait_for_selector("#video-output video")
                source = page.get_attribute("#video-output video", "src")
                assert source.endswith("clip.webm")
            finally:
                context.close()
