"""Training-free registration with dense features (MIND-SSC or a frozen SSL encoder's) and ConvexAdam.

:mod:`~nnssl.registration.pipeline` (``register_images``, ``register_prepared``), :mod:`~nnssl.registration.convex_adam`,
:mod:`~nnssl.registration.mind`, :mod:`~nnssl.registration.geometry`, :mod:`~nnssl.registration.metrics`,
:mod:`~nnssl.registration.outputs`; the CLI is ``nnssl_register`` (documentation/registration.md).
"""
