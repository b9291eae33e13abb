"""nnssl.imageio."""
