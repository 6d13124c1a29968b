"""Mask2Former web demo: a page to segment images and videos; ``python demo/app.py --help``.

Without options it serves the model ``make quickstart`` trains. The page lives in
:mod:`mask2former.apps.web`; this script sets up logging, reports a bad config or weights
(exit status 1) and serves the page until interrupted.
"""

import logging
import os
import sys
import warnings

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former.apps.cli import DemoError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What tools/quickstart.py trains and where it writes the weights.
QUICKSTART_CONFIG = os.path.join(ROOT, "configs", "shapes", "maskformer2_R18_panoptic.yaml")
QUICKSTART_WEIGHTS = os.path.join(ROOT, "output", "quickstart", "model_final.pth")


def main(argv=None) -> int:
    try:
        from mask2former.apps import web
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args = web.build_argument_parser(default_config=QUICKSTART_CONFIG).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's requests to itself
    try:
        # this script owns its process, so it may tune the CPU allocator (the Predictor's
        # tune_cpu_allocator; a library user opts in)
        web.serve(
            args,
            quickstart_model=(QUICKSTART_CONFIG, QUICKSTART_WEIGHTS),
            tune_cpu_allocator=True,
        )
    except DemoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
