"""nnssl: self-supervised pre-training of 3D medical images."""

__version__ = "0.1.0"
