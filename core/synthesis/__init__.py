"""Tumour insertion into real brains (issue 13): region, model and API.

* :mod:`core.synthesis.region` -- the region ``R`` that is regenerated, the 1 mm crop around it, intensity
  normalisation and the seamless blend (numpy/scipy only, no Keras import).
* :mod:`core.synthesis.vaegan` -- the mask-conditioned VAE-GAN generator and its patch discriminator (Keras 3).
* :mod:`core.synthesis.insert` -- ``insert_tumour``: a host case + a target label map -> generated cases.
"""
