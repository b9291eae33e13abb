"""nnssl.preprocessing."""
