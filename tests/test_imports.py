"""What importing the package loads: the modules that take long to import and that only some
code uses are loaded by that code (tools/benchmark_startup.py measures the start-up)."""

import json

from helpers import run_python


def test_package_and_train_net_do_not_load_the_drawing_or_matching_modules():
    code = (
        "import sys\n"
        "import mask2former, mask2former.export, mask2former.interop.huggingface, train_net\n"
        "from mask2former.predictor import Predictor\n"
        "deferred = ('matplotlib', 'scipy.optimize')\n"
        "print(' '.join(m for m in deferred if m in sys.modules) or '-')\n"
        # the control: the code that uses them loads them
        "import mask2former.utils.visualization\n"
        "from mask2former.modeling.matcher import HungarianMatcher\n"
        "import torch\n"
        "matcher = HungarianMatcher(num_points=4)\n"
        "outputs = {'pred_logits': torch.zeros(1, 2, 3), 'pred_masks': torch.zeros(1, 2, 8, 8)}\n"
        "targets = [{'labels': torch.tensor([0]), 'masks': torch.ones(1, 8, 8)}]\n"
        "print(matcher(outputs, targets)[0][1].tolist())\n"
        "print(' '.join(m for m in deferred if m in sys.modules))\n"
    )
    before, matched, after = run_python(code).stdout.split("\n")[-4:-1]
    assert before == "-"
    assert json.loads(matched) == [0]
    assert after == "matplotlib scipy.optimize"
