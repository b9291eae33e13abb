"""Training-free registration with dense features (MIND-SSC or a frozen SSL encoder's) and ConvexAdam.

Modules: ``pipeline`` (``register_images``, ``register_prepared``), ``convex_adam``, ``mind``, ``geometry``,
``metrics``, ``outputs``, ``evaluation``; the CLI is ``nnssl_register`` (documentation/registration.md).
"""
