"""BraTS Studio: a multipage Streamlit viewer for brain-tumour MRI, segmentation and synthesis.

Run with ``make run`` (``streamlit run streamlit_app.py``). The pages live in ``pages/``; the
state, actions and shared widgets in the ``app`` package (``app.state``, ``app.actions``, ``app.widgets``).
"""

import streamlit as st

from app import access, actions
from app.widgets import keep_shared_settings, sidebar

st.set_page_config(page_title="BraTS Studio", page_icon="🧠", layout="wide")
access.require_login()  # network mode: nothing below runs before a login (app.access)
keep_shared_settings()
actions.ensure_session()  # session id in the URL; restores the saved work after a reload

navigation = st.navigation(
    {
        "Case": [
            st.Page("pages/load.py", title="Load", icon=":material/upload_file:", default=True),
            st.Page("pages/viewer.py", title="Viewer", icon=":material/view_in_ar:"),
        ],
        "Models": [
            st.Page("pages/segment.py", title="Segment", icon=":material/neurology:"),
            st.Page("pages/edit_mask.py", title="Edit mask", icon=":material/brush:"),
            st.Page("pages/generate.py", title="Generate", icon=":material/auto_awesome:"),
        ],
    }
)
navigation.run()
sidebar()  # after the page, so it shows what the page just did (a new case, a prediction)
access.account_sidebar()
