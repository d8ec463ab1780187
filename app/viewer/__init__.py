"""The NiiVue (WebGL) viewer/editor component: :mod:`.component` is its Python half, ``frontend/`` its JavaScript
source (``src/``, ``package.json`` + lockfile) and the committed bundle ``frontend/build`` (``make frontend``)."""
