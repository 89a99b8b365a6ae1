"""Open-set losses: ``from training.losses import EntropicOpenSetLoss, ...``.

See docs/losses.md for formulas, defaults and references.
"""

from .entropic import EntropicOpenSetLoss, MaximalEntropyLoss

__all__ = ["EntropicOpenSetLoss", "MaximalEntropyLoss"]
