"""PointINS-JAX: instance-aware self-supervised pretraining of PTv3 encoders."""

__version__ = "0.1.0"
