"""Open-set losses: ``from training.losses import EntropicOpenSetLoss, ...``.

See docs/losses.md for formulas, defaults, label conventions and references.
"""

from .base import REDUCTIONS
from .cac import CACLoss
from .entropic import EntropicOpenSetLoss, MaximalEntropyLoss
from .margin import ArcFaceLoss, CosFaceLoss, CosineMarginHead, adacos_fixed_scale
from .objectosphere import EntropicObjectoSphereLoss, ObjectoSphereLoss
from .simloss import SimLoss, ordinal_similarity, similarity_from_matrix

__all__ = [
    "REDUCTIONS",
    "ArcFaceLoss",
    "CACLoss",
    "CosFaceLoss",
    "CosineMarginHead",
    "EntropicObjectoSphereLoss",
    "EntropicOpenSetLoss",
    "MaximalEntropyLoss",
    "ObjectoSphereLoss",
    "SimLoss",
    "adacos_fixed_scale",
    "ordinal_similarity",
    "similarity_from_matrix",
]
