"""nnssl.engine."""
