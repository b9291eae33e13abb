"""Every method's loss on fixed inputs equals the value recorded before the backbone-interface rewrite (issue 7).

``reference_losses.json`` was written by ``reference_batches.py`` on main at 1d5829a (methods reaching into ResEnc
and Primus internals). The rewritten methods build the same parameters in the same order, so the same seeds give the
same initial weights, the same masks and the same loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reference_batches import ARCHITECTURE_NAMES, METHOD_NAMES, reference_loss

REFERENCE = json.loads((Path(__file__).parent / "reference_losses.json").read_text())


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_loss_on_fixed_inputs_equals_the_recorded_value(method: str, architecture: str) -> None:
    assert reference_loss(method, architecture) == pytest.approx(REFERENCE[f"{method}/{architecture}"], rel=1e-5)
