"""ConvexAdam's parameters, importable without torch (command-line parsers show their defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ConvexAdamSettings:
    """ConvexAdam's parameters (module docstring); ``check()`` names any bad value."""

    grid_spacing: int = 6
    displacement_range: int = 4
    inverse_consistency: bool = True
    adam_grid_spacing: int = 2
    adam_iterations: int = 80
    adam_lr: float = 1.0
    regularisation: float = 1.25
    smoothing_kernel: int = 3
    smoothing_passes: int = 3

    def check(self) -> ConvexAdamSettings:
        problems = []
        if self.grid_spacing < 1:
            problems.append(f"grid_spacing must be >= 1 voxel, got {self.grid_spacing}")
        if self.displacement_range < 0:
            problems.append(f"displacement_range must be >= 0 coarse cells, got {self.displacement_range}")
        if self.adam_grid_spacing < 1:
            problems.append(f"adam_grid_spacing must be >= 1 voxel, got {self.adam_grid_spacing}")
        if self.adam_iterations < 0:
            problems.append(f"adam_iterations must be >= 0 (0 skips stage 2), got {self.adam_iterations}")
        if not self.adam_lr > 0:
            problems.append(f"adam_lr must be > 0, got {self.adam_lr}")
        if self.regularisation < 0:
            problems.append(f"regularisation must be >= 0, got {self.regularisation}")
        if self.smoothing_kernel < 1 or self.smoothing_kernel % 2 == 0:
            problems.append(f"smoothing_kernel must be an odd number >= 1, got {self.smoothing_kernel}")
        if self.smoothing_passes < 0:
            problems.append(f"smoothing_passes must be >= 0, got {self.smoothing_passes}")
        if problems:
            raise ValueError("ConvexAdam settings: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["ConvexAdamSettings"]
