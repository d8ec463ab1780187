"""BraTS Studio core library (never imports streamlit).

TensorFlow's oneDNN CPU kernels run Conv3D ~4x faster on this project's CPUs, but this TF build leaves them off
unless asked, and the switch only works before TensorFlow is first imported: setting it here, when any ``core``
module is first imported, covers every route (app, CLIs, training).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
