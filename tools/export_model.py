#!/usr/bin/env python
"""Export a Mask2Former network to ONNX or as a ``torch.export`` program.

The network takes the normalised image batch ``images`` (N, 3, H, W; H and W multiples of
the size divisibility) and returns ``class_logits`` (N, Q, K+1) and ``mask_logits``
(N, Q, H/4, W/4); batch, height and width are dynamic. The file carries the config, class
names, thing/stuff split, thresholds, input format and size divisibility, so that it alone
runs it: ``python demo/demo.py --onnx model.onnx --input IMAGES`` or
``mask2former.Predictor("model.onnx", backend="onnxruntime")``. The logic is in
:mod:`mask2former.export`. Image models only: a video config (``VideoMaskFormer``) is refused
before anything is built.

Examples:
    python tools/export_model.py --config-file configs/shapes/maskformer2_R18_panoptic.yaml \\
        --output output/model.onnx --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py --config-file CONFIG --format exported-program \\
        --output model.pt2 --opts MODEL.WEIGHTS model_final_94dc52.pkl
"""

import argparse
import logging
import sys
import warnings

# detectron2 uses torch.jit.script, deprecated in this torch: nothing a user can act on.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

from mask2former import Predictor  # noqa: E402
from mask2former.config import UnknownConfigKeyError, add_opts_argument, load_config  # noqa: E402
from mask2former.export import (  # noqa: E402
    EXPORT_FORMATS,
    ExportError,
    MissingDependencyError,
    check_exportable,
    export,
)
from mask2former.predictor import WeightsNotFoundError  # noqa: E402


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config YAML file")
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, default="onnx", help="what to write (default: onnx)"
    )
    parser.add_argument("--output", required=True, metavar="PATH", help=".onnx or .pt2 file")
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="ONNX: write the weights to PATH.data beside the file (automatic above 2 GB)",
    )
    add_opts_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config_file, args.opts)
        check_exportable(cfg, args.config_file)
        predictor = Predictor(cfg, device="cpu")
        result = export(
            predictor.model,
            predictor.cfg,
            args.output,
            args.format,
            external_data=True if args.external_data else None,
        )
    except (
        FileNotFoundError,
        UnknownConfigKeyError,
        WeightsNotFoundError,
        ExportError,
        MissingDependencyError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {', '.join(result.paths)} ({result.size_bytes / 2**20:.1f} MiB)")
    for kind, signature in (("input", result.inputs), ("output", result.outputs)):
        for name, shape in signature:
            print(f"  {kind:6s} {name:12s} {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
