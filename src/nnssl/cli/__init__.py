"""nnssl.cli."""
