"""nnssl.methods."""
