"""nnssl.transforms."""
