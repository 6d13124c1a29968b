#!/usr/bin/env python
"""Convert a torchvision ImageNet ResNet checkpoint into a detectron2 ``.pkl``.

Usage:
    wget https://download.pytorch.org/models/resnet50-0676ba61.pth -O r50.pth
    python tools/convert-torchvision-to-d2.py r50.pth R-50.pkl

Then use it with MODEL.WEIGHTS R-50.pkl, MODEL.PIXEL_MEAN [123.675, 116.280, 103.530],
MODEL.PIXEL_STD [58.395, 57.120, 57.375], INPUT.FORMAT "RGB" and
MODEL.RESNETS.STRIDE_IN_1X1 False (torchvision puts the stride in the 3x3 conv).
"""

import argparse
import sys

from mask2former.modeling.backbone.convert import (
    convert_checkpoint_file,
    convert_torchvision_resnet_state_dict,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision ResNet state dict (.pth)")
    parser.add_argument(
        "output", help="detectron2 checkpoint to write (.pkl, or .pth or .safetensors)"
    )
    args = parser.parse_args(argv)
    try:
        count = convert_checkpoint_file(
            args.input, args.output, convert_torchvision_resnet_state_dict, author="torchvision"
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
