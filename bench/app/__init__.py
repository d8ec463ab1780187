"""Benchmarks of the app in a browser: viewer responsiveness, NiiVue editor, and the README screenshots."""
