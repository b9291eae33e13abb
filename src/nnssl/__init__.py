"""nnssl: self-supervised pre-training of 3D medical images."""

import warnings

__version__ = "0.1.0"

# timm (imported by dynamic-network-architectures' Eva) decorates a class with torch.jit.interface at import time,
# which recent torch reports as a FutureWarning on every start; nothing in nnssl uses TorchScript.
warnings.filterwarnings("ignore", message="`torch.jit.interface` is deprecated", category=FutureWarning)
