"""Synthesis stage: synthetic and generated cases.

* :mod:`core.synthesis.anatomy` -- the MNI152 template anatomy on the BraTS grid.
* :mod:`core.synthesis.phantom` -- synthetic glioma phantoms with domain randomisation
  (CLI: ``python -m core.phantom``);
  :mod:`core.synthesis.demo` -- the built-in demo case (a fixed-seed phantom).
* :mod:`core.synthesis.cvae` -- the conditional VAE; :mod:`core.synthesis.generate` -- new brains from a tumour mask
  with it (CLI: ``python -m core.generate``).
* Tumour insertion into real brains (issue 13):

  * :mod:`core.synthesis.region` -- the region ``R`` that is regenerated, the 1 mm crop around it, intensity
    normalisation and the seamless blend (numpy/scipy only, no Keras import).
  * :mod:`core.synthesis.texture` -- the host's scanner texture next to ``R`` and noise with its spectrum, added
    to sampled fills (numpy/scipy only).
  * :mod:`core.synthesis.vaegan` -- the mask-conditioned VAE-GAN generator and its patch discriminator (Keras 3).
  * :mod:`core.synthesis.insert` -- ``insert_tumour``: a host case + a target label map -> generated cases
    (CLI: ``python -m core.generate --host``).
"""
