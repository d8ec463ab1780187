"""Average the outputs of several U-Nets in one ``.keras`` file (an ensemble): ``python -m train.ensemble``.

Unlike a weight soup (``train.soup``, one lineage only), an ensemble combines independently trained
U-Nets, e.g. of different patch sizes or initialisations, as nnU-Net averages its five folds: the members
run side by side on the same input and their region sigmoids (or class softmaxes) are averaged, so the
file still maps ``(B, X, Y, Z, 4)`` to one output and ``core.segment`` / the app use it unchanged (inference
costs the sum of the members). Built from built-in layers only, so it loads with ``safe_mode=True``.
A JSON card beside the output names the members, their SHA-256 and their own cards.

Example::

    python -m train.ensemble -o runs/ens.keras weights/unet.keras runs/long96/unet.keras
    python -m train.evaluate ../shared/data/brats-real --cases train/splits/brats-real-validation.txt \\
        --weights runs/ens.keras --out ens.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from train.soup import parse_models, save_with_card


def build_ensemble(members: Sequence, name: str = "unet_ensemble"):
    """A functional model that feeds one input to every member and averages their outputs (float32).

    Raises:
        ValueError: fewer than two members, or their input channels or output channels differ.
    """
    import keras

    if len(members) < 2:
        raise ValueError("an ensemble needs at least two models")
    channels_in = {m.inputs[0].shape[-1] for m in members}
    channels_out = {m.outputs[0].shape[-1] for m in members}
    if len(channels_in) != 1 or len(channels_out) != 1:
        raise ValueError(f"the models differ in input channels {sorted(channels_in)} or output channels "
                         f"{sorted(channels_out)} (regions and class U-Nets cannot be averaged)")
    inputs = keras.Input((None, None, None, channels_in.pop()), name="image")
    outputs = []
    for i, member in enumerate(members):
        member.name = f"member_{i}"  # unique names inside the ensemble
        outputs.append(keras.layers.Activation("linear", dtype="float32", name=f"member_{i}_float32")(member(inputs)))
    mean = keras.layers.Average(dtype="float32", name="mean")(outputs)
    return keras.Model(inputs, mean, name=name)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m train.ensemble -o OUT.keras IN.keras IN.keras ...``."""
    paths, out, members = parse_models("python -m train.ensemble", __doc__.split("\n\n")[0],
                                       "U-Net .keras files (same output kind: regions or classes)",
                                       "ensemble model (.keras); its card is written beside it", argv)
    from core.io.weights import file_sha256

    try:
        ensemble = build_ensemble(members)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    cards = [path.with_suffix(".json") for path in paths]
    save_with_card(ensemble, out, {
        "model": f"output-averaging ensemble (train.ensemble) of {len(paths)} U-Nets",
        "members": [{"path": str(path), "sha256": file_sha256(path), "params": int(m.count_params()),
                     "card": json.loads(c.read_text()) if c.is_file() else None}
                    for path, m, c in zip(paths, members, cards, strict=True)]})
    print(f"ensemble of {len(paths)} models written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
