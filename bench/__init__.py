"""Benchmarks and measurements (not tests, not used by the app), grouped by what they measure.

* ``bench.segmentation``: the U-Net and its inference path (speed, precision, inference context, metrics timing);
* ``bench.synthesis``: phantoms, the conditional VAE and tumour insertion (quality, realism, speed, contact sheets);
* ``bench.app``: the Streamlit app and the NiiVue viewer in a browser (responsiveness, screenshots);
* ``bench.serve``: the REST API and Ray batch segmentation (latency, throughput, memory);
* ``bench.analysis``: one-off measurements of the data that set constants or explain results (not benchmarks).

``bench.server`` (a Streamlit server driven by Chromium) is shared by the app benchmarks and the browser tests.
Results of the shipped state land in ``bench/results/<area>/``; records of trials live in ``docs/experiments/``.
"""
