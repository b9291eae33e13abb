"""nnssl.planning."""
