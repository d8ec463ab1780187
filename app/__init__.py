"""BraTS Studio, the Streamlit app's Python side (imports streamlit; ``core`` never imports it).

- :mod:`app.auth`, :mod:`app.launch`: login configuration, ``python -m app.auth hash``, the launcher (``make run``).
- :mod:`app.access`: the login gate, the user, which server folders may be opened.
- :mod:`app.state`: the session's state (current case, label layers, prediction, samples) and the job registry.
- :mod:`app.persistence`: the session's work saved on the server and restored after a reload.
- :mod:`app.models`: weights info, models loaded once per server, uploaded U-Nets.
- :mod:`app.actions`: what the pages do (load, segment through ``core.segmentation.pipeline``, edit, generate).
- :mod:`app.widgets`: the widgets the pages share (sidebar, PNG viewer, tables, NiiVue wrapper).
- :mod:`app.viewer`: the NiiVue custom component (Python half + ``frontend/`` source and built bundle).

``streamlit_app.py`` and the thin ``pages/*.py`` stay at the repository root (Streamlit runs them as scripts).
"""
