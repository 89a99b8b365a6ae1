"""opengallery: open-set recognition from training to a calibrated gallery service."""

__version__ = "0.1.0"
