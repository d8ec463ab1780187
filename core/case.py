"""A BraTS case: four co-registered MRI modalities and an optional segmentation.

Like a TorchIO ``Subject``: one object holds the named images, their geometry and where
they came from. Channel order is fixed: ``MODALITIES = ("t1", "t1ce", "t2", "flair")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


@dataclass
class Case:
    """Four modalities on one grid plus an optional label map.

    Attributes:
        image: float32 array ``(4, X, Y, Z)``, channels in ``MODALITIES`` order.
        affine: ``(4, 4)`` voxel-to-world matrix of the reference (t1) file.
        header: copy of the reference NIfTI header (written back on save).
        seg: uint8 ``(X, Y, Z)`` internal labels 0..3 (see ``core.labels``), or ``None``.
        label_convention: convention of the source segmentation file (``"2020"``/``"2023"``) or ``None``.
        files: source file name per modality (and ``"seg"``).
        naming: how the files were named: ``"2020"``, ``"2023"``, ``"plain"`` or ``None`` (in memory).
        name: case identifier (usually the folder name).
    """

    image: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    seg: np.ndarray | None = None
    label_convention: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    naming: str | None = None
    name: str = "case"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm from the header zooms."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])  # type: ignore[return-value]

    def modality(self, name: str) -> np.ndarray:
        """One modality volume ``(X, Y, Z)`` by name (``"t1"``, ``"t1ce"``, ``"t2"``, ``"flair"``)."""
        return self.image[MODALITIES.index(name)]
