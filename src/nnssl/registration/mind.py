"""MIND-SSC, the hand-crafted baseline descriptor of feature registration.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using self-similarities"
(MICCAI 2013): for the 12 pairs ``(p, q)`` of the six face neighbours of a voxel that are sqrt(2) apart, the
patch distance ``D_pq(x) = sum_{y in patch(radius)} (I(x + y + d p) - I(x + y + d q))^2`` (``d = dilation``) gives
``MIND_pq(x) = exp(-(D_pq(x) - min_pq D_pq(x)) / V(x))`` with ``V(x)`` the mean over the 12 of
``D_pq(x) - min D_pq(x)`` (clamped to [0.001, 1000] x its mean over the volume). 12 channels in (0, 1], invariant to
the image's contrast up to the local variance. Computed by the ``convexadam`` package's ``MINDSSC`` (by the
authors); radius 1 and dilation 2 are ConvexAdam's defaults.
"""

from __future__ import annotations

import torch

from nnssl.registration.convex_adam import _convexadam_utils

#: Channels of MIND-SSC.
MIND_CHANNELS = 12


@torch.no_grad()
def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """(12, X, Y, Z) MIND-SSC of a (X, Y, Z) or (1, X, Y, Z) image (float32, on the image's device)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"MIND-SSC takes one channel, got {image.shape[0]}")
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"MIND-SSC takes a (X, Y, Z) image, got shape {tuple(image.shape)}")
    if radius < 1 or dilation < 1:
        raise ValueError(f"MIND-SSC radius and dilation must be >= 1, got {radius} and {dilation}")
    utils = _convexadam_utils()
    x = image.float()[None, None]
    return utils.MINDSSC(x, radius, dilation, device=x.device)[0]


__all__ = ["MIND_CHANNELS", "mind_ssc"]
