#!/usr/bin/env python
"""Convert an official Swin Transformer ImageNet checkpoint into a detectron2 ``.pkl``.

Usage:
    wget https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth
    python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth \
        swin_tiny_patch4_window7_224.pkl

Parameter names are kept (D2SwinTransformer uses the official ones); the classification head,
the final norm and the precomputed attention masks are dropped.
"""

import argparse
import sys

from mask2former.modeling.backbone.convert import convert_checkpoint_file, convert_swin_state_dict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="official Swin checkpoint (.pth with a 'model' entry)")
    parser.add_argument(
        "output", help="detectron2 checkpoint to write (.pkl, or .pth or .safetensors)"
    )
    args = parser.parse_args(argv)
    try:
        count = convert_checkpoint_file(
            args.input, args.output, convert_swin_state_dict, author="third_party"
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
