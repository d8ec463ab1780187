"""Average the weights of models fine-tuned from one start (a uniform "model soup"): ``python -m train.soup``.

U-Nets and insertion VAE-GANs (``core.synthesis``) alike.

Checkpoints of one lineage (fine-tuned from the same weights) usually sit in one basin, where the average of
their weights scores at least as well as the best of them and costs nothing at inference (Wortsman et al.,
2022, "Model soups"). Every ingredient must have the same architecture; the dtype policy and layer names of
the first are kept. A JSON card beside the output names the ingredients and their SHA-256.

Example::

    python -m train.soup -o runs/soup.keras runs/gpu/export_step000400.keras runs/gpu2/export_step000200.keras
    python -m train.evaluate ../shared/data/brats-real --cases train/splits/brats-real-validation.txt \\
        --weights runs/soup.keras --out soup.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def average_weights(weight_lists: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several models' weight lists (same shapes, in the same order).

    Raises:
        ValueError: no models, or the lists differ in length or shapes.
    """
    if not weight_lists:
        raise ValueError("no models to average")
    first = weight_lists[0]
    for i, weights in enumerate(weight_lists[1:], start=2):
        if [w.shape for w in weights] != [w.shape for w in first]:
            raise ValueError(f"model {i} has a different architecture than model 1 (weight shapes differ)")
    return [np.mean([np.asarray(w[k], np.float64) for w in weight_lists], axis=0).astype(first[k].dtype)
            for k in range(len(first))]


def load_unet_or_insertion(path: Path):
    """A soup ingredient: a U-Net (checked as ``core.segmentation.inference.load_model`` does) or an insertion
    VAE-GAN (``core.synthesis``), loaded with ``safe_mode``.

    Raises:
        ModelLoadError: the file does not load, or holds neither kind of model.
    """
    from core.io.weights import load_keras_file
    from core.segmentation.inference import check_unet_io
    from core.synthesis.vaegan import InsertionVAEGAN

    model = load_keras_file(path, "model", "python -m train.unet or python -m train.insertion")
    if not isinstance(model, InsertionVAEGAN):
        check_unet_io(model, str(path))
    return model


def parse_models(prog: str, description: str, models_help: str, out_help: str,
                 argv: Sequence[str] | None, loader=None) -> tuple[list[Path], Path, list]:
    """Parse ``prog -o OUT.keras IN.keras IN.keras ...`` and load the models (``train.soup``, ``train.ensemble``)
    with ``loader`` (default: ``core.segmentation.inference.load_keras_unet``, U-Nets only).

    Returns:
        The input paths, the output path and the loaded models.

    Raises:
        SystemExit: fewer than two models, or one does not load (the message names it).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("models", nargs="+", help=models_help)
    p.add_argument("-o", "--out", required=True, help=out_help)
    args = p.parse_args(argv)
    if len(args.models) < 2:
        p.error("give at least two models")

    from core.segmentation.inference import ModelLoadError, load_keras_unet

    paths = [Path(m) for m in args.models]
    try:
        return paths, Path(args.out), [(loader or load_keras_unet)(path) for path in paths]
    except ModelLoadError as exc:
        raise SystemExit(f"error: {exc}") from exc


def save_with_card(model, out: Path, card: dict) -> None:
    """Save ``model`` to ``out`` (parents created) and ``card`` beside it as ``out.json``, with the model's
    parameter count and the creation time added (``train.soup``, ``train.ensemble``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    card = {**card, "params": int(model.count_params()), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m train.soup -o OUT.keras IN.keras IN.keras ...``."""
    paths, out, models = parse_models("python -m train.soup", __doc__.split("\n\n")[0],
                                      "U-Net or insertion VAE-GAN .keras files of one lineage (same architecture)",
                                      "averaged model (.keras); its card is written beside it", argv,
                                      loader=load_unet_or_insertion)
    from core.io.weights import file_sha256

    try:
        averaged = average_weights([m.get_weights() for m in models])
    except ValueError as exc:
        raise SystemExit(f"error: {exc} ({', '.join(map(str, paths))})") from exc
    soup = models[0]
    soup.set_weights(averaged)
    from core.synthesis.vaegan import InsertionVAEGAN

    kind = "insertion VAE-GANs" if isinstance(soup, InsertionVAEGAN) else "U-Nets"
    save_with_card(soup, out, {"model": f"uniform weight average (train.soup) of {kind} of one lineage",
                               "ingredients": [{"path": str(path), "sha256": file_sha256(path)} for path in paths]})
    print(f"averaged {len(paths)} models into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
