"""Training and evaluation pieces used by ``train_net.py``."""

from .checkpoint import AtomicDetectionCheckpointer
from .evaluation import (
    EVALUATOR_REGISTRY,
    OUTPUT_FLAGS,
    EvaluationDependencyError,
    InstanceSegEvaluator,
    OutputEvaluation,
    build_evaluator,
    check_evaluation_dependencies,
)
from .optimizer import add_full_model_gradient_clipping, build_optimizer
from .trainer import MaskFormerTrainer, accumulation_steps, build_train_loop
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "EVALUATOR_REGISTRY",
    "AtomicDetectionCheckpointer",
    "EvaluationDependencyError",
    "InstanceSegEvaluator",
    "MaskFormerTrainer",
    "OUTPUT_FLAGS",
    "OutputEvaluation",
    "SemanticSegmentorWithTTA",
    "accumulation_steps",
    "add_full_model_gradient_clipping",
    "build_evaluator",
    "check_evaluation_dependencies",
    "build_optimizer",
    "build_train_loop",
]
