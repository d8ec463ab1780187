"""Contact sheet of real BraTS cases next to phantoms: ``docs/phantom_contact_sheet.png``.

Rows: the real cases found in ``../shared/data/brats-real`` (skipped when absent), then phantoms.
Columns: T1, T1ce, T2, FLAIR (each windowed by its own 0.5-99.5 percentiles of the brain) and the
segmentation over FLAIR, all on the same slice: through the tumour's largest cross-section when
a segmentation exists, else the middle of the brain.

    .venv/bin/python bench/synthesis/contact_sheet.py [--seeds 0 1 2 3] [--plane axial|coronal] [--out PATH]
    .venv/bin/python bench/synthesis/contact_sheet.py --cases CASE_DIR ... --out PATH   # only these case folders
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.io.case import MODALITIES, Case, load_case  # noqa: E402
from core.preprocessing.preprocess import bounding_box, brain_mask  # noqa: E402
from core.synthesis.phantom import PhantomConfig, generate_phantom  # noqa: E402
from core.viewer.render import DisplayGeometry, apply_window, auto_window, display_view, overlay  # noqa: E402

REAL_ROOT = ROOT.parent / "shared" / "data" / "brats-real"
TILE = 200  # pixels per tile side
LABEL_WIDTH = 120


def _slice_index(case: Case, geometry: DisplayGeometry, plane: str) -> int:
    """Slice through the largest tumour cross-section, else through the brain centre."""
    axis = geometry.axes(plane)[0]
    if case.seg is not None and case.seg.any():
        others = tuple(a for a in range(3) if a != axis)
        return int(np.argmax((case.seg > 0).sum(axis=others)))
    box = bounding_box(brain_mask(case.image))
    assert box is not None
    return (box[axis].start + box[axis].stop) // 2


def _tile(rgb: np.ndarray) -> Image.Image:
    """Square tile of a display slice (padded, then resized)."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    canvas = np.zeros((side, side, 3), np.uint8)
    canvas[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = rgb
    return Image.fromarray(canvas).resize((TILE, TILE), Image.Resampling.BILINEAR)


def _fixed_crop(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The same display window for every row (BraTS brains fill ~10-90 % x 20-80 % of a slice)."""
    rows, cols = shape
    return slice(int(rows * 0.08), int(rows * 0.92)), slice(int(cols * 0.15), int(cols * 0.85))


def case_row(case: Case, plane: str) -> list[Image.Image]:
    """The five tiles of one case."""
    geometry = DisplayGeometry.from_affine(case.affine)
    index = _slice_index(case, geometry, plane)
    crop = _fixed_crop(display_view(case.image[0], plane, index, geometry).shape)
    tiles, grey = [], None
    for m in range(len(MODALITIES)):
        low, high = auto_window(case.image[m])
        view = display_view(case.image[m], plane, index, geometry)[crop]
        grey = np.repeat(apply_window(view, low, high)[:, :, None], 3, axis=2)
        tiles.append(_tile(grey))
    if case.seg is not None and grey is not None:
        seg_view = display_view(case.seg, plane, index, geometry)[crop]
        tiles.append(_tile(overlay(grey, seg_view.astype(np.uint8), opacity=0.45)))
    else:
        tiles.append(_tile(np.zeros((4, 4, 3), np.uint8)))
    return tiles


def contact_sheet(rows: list[tuple[str, Case]], plane: str) -> Image.Image:
    """Assemble labelled rows into one image."""
    sheet = Image.new("RGB", (LABEL_WIDTH + 5 * TILE, 20 + TILE * len(rows)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(("T1", "T1ce", "T2", "FLAIR", "seg over FLAIR")):
        draw.text((LABEL_WIDTH + c * TILE + 6, 4), title, fill=(255, 255, 255))
    for r, (label, case) in enumerate(rows):
        for c, tile in enumerate(case_row(case, plane)):
            sheet.paste(tile, (LABEL_WIDTH + c * TILE, 20 + r * TILE))
        draw.text((6, 20 + r * TILE + TILE // 2), label, fill=(255, 255, 255))
    return sheet


def _row_label(name: str, width: int = 17) -> str:
    """A folder name wrapped to the label column."""
    return "\n".join(name[i:i + width] for i in range(0, len(name), width))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default="axial")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom_contact_sheet.png")
    parser.add_argument("--cases", type=Path, nargs="+", default=None,
                        help="draw these case folders (one row each, labelled by folder name) instead")
    args = parser.parse_args()
    rows: list[tuple[str, Case]] = []
    if args.cases:
        rows = [(_row_label(folder.name), load_case(folder)) for folder in args.cases]
        args.seeds = []
    elif REAL_ROOT.is_dir():
        for folder in sorted(p for p in REAL_ROOT.iterdir() if p.is_dir()):
            rows.append((f"real\n{folder.name[10:]}", load_case(folder)))
    config = PhantomConfig(strength=args.strength)
    for seed in args.seeds:
        rows.append((f"phantom\nseed {seed}", generate_phantom(seed, config)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, args.plane).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
