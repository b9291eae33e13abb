"""nnssl.data."""
