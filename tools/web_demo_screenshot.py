#!/usr/bin/env python
"""Take the README's screenshot of the web demo with a result (``docs/web-demo.png``).

Starts ``demo/app.py`` (by default on the model ``make quickstart`` trains), opens it in
Debian's Chromium through Playwright, segments an image, clicks the first segment of the
legend and saves the page::

    python tools/web_demo_screenshot.py [--image PATH] [--task panoptic] [--output FILE]
        [--opts MODEL.WEIGHTS PATH ...]

Needs gradio, playwright (requirements.txt) and Chromium (``apt-get install -y chromium``).
"""

import argparse
import os
import sys
import tempfile

from playwright.sync_api import sync_playwright

from mask2former.apps import browser
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import synthetic_split_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image",
        help="image to segment (default: the first validation image of the shapes data set)",
    )
    parser.add_argument("--task", default="panoptic", choices=("panoptic", "instance", "semantic"))
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "web-demo.png"))
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="passed on to demo/app.py --opts"
    )
    args = parser.parse_args(argv)
    if browser.find_chromium() is None:
        print(f"error: {browser.CHROMIUM_INSTALL_HINT}", file=sys.stderr)
        return 1
    image = args.image
    if image is None:
        image_root = synthetic_split_paths(os.path.join(get_datasets_root(), "shapes"), "val")[
            "image_root"
        ]
        if not os.path.isdir(image_root):
            print(f"error: no {image_root}: run `make quickstart` first.", file=sys.stderr)
            return 1
        image = os.path.join(image_root, sorted(os.listdir(image_root))[0])
    app_arguments = ["--opts", *args.opts] if args.opts else []
    with tempfile.TemporaryDirectory() as scratch:
        log = os.path.join(scratch, "app.log")
        with browser.running_web_demo(
            os.path.join(ROOT, "demo", "app.py"), app_arguments, log_path=log
        ) as url:
            with sync_playwright() as playwright:
                context = browser.launch_chromium(
                    playwright,
                    os.path.join(scratch, "profile"),
                    viewport={"width": 1280, "height": 900},
                )
                try:
                    page = context.new_page()
                    page.goto(url)
                    page.locator("#image-task").get_by_role("radio", name=args.task).check()
                    browser.upload(page, "image-input", image)
                    browser.wait_for_status(page, "image-status", "segmentation of")
                    page.locator("#segments .legend-item").first.click()
                    browser.wait_for_status(page, "selected-segment", "pixels")
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('img')].every(img => img.complete)"
                    )
                    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
                    page.screenshot(path=args.output, full_page=True)
                finally:
                    context.close()
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
