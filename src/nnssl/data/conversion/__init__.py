"""nnssl.data.conversion."""
