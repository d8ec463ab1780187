"""BraTS Studio entry point (placeholder home page until the app pages land)."""

import streamlit as st

st.set_page_config(page_title="BraTS Studio", layout="wide")
st.title("BraTS Studio")
st.write("Brain tumour segmentation (3D U-Net) and synthetic MRI (3D CVAE) for BraTS cases.")
