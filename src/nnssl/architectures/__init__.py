"""nnssl.architectures."""
