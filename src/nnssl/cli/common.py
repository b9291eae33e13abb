"""What the preprocessing commands share: the read-policy flags (``-max_voxels``, ``--resample_sheared``) and how a
setup error becomes one stderr line."""

from __future__ import annotations

import argparse

from nnssl.imageio import DEFAULT_MAX_VOXELS
from nnssl.paths import MissingEnvironmentVariable
from nnssl.serialization import OUT_OF_SPACE_ERRNOS, OutOfSpaceError

#: Errors a command reports as one line (exit code 1) instead of a traceback.
SETUP_ERRORS = (MissingEnvironmentVariable, KeyError, ValueError, OSError)


def add_read_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """``-max_voxels N`` and ``--resample_sheared``: what every image is screened with (nnssl.imageio.ReadPolicy)."""
    parser.add_argument(
        "-max_voxels",
        type=_positive_int,
        default=DEFAULT_MAX_VOXELS,
        help=f"refuse images whose header implies more voxels (x channels) than this, before reading them "
        f"(default {DEFAULT_MAX_VOXELS} = 1024^3, 4 GiB as float32)",
    )
    parser.add_argument(
        "--resample_sheared",
        action="store_true",
        help="resample NIfTI images with a sheared affine onto an axis-aligned grid (cubic; masks nearest) "
        "instead of refusing them; give it to the fingerprint and the preprocessing alike",
    )


def _positive_int(text: str) -> int:
    value = int(float(text)) if "e" in text.lower() else int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of voxels, got {text}")
    return value


def error_message(err: BaseException) -> str:
    """The line to print for a setup error: a full disk says where and what to do, a KeyError loses its quotes."""
    if isinstance(err, OutOfSpaceError):
        return str(err)
    if isinstance(err, OSError) and err.errno in OUT_OF_SPACE_ERRNOS:
        where = err.filename or "the output disk"
        return (
            f"no space left on {where} ({err.strerror}). Finished work is kept; free space (or point "
            "$nnssl_preprocessed at a larger disk) and run the same command again."
        )
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)
