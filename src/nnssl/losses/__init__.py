"""nnssl.losses."""
