"""Applications built on the :class:`~mask2former.Predictor`.

- :mod:`mask2former.apps.web`: the web demo behind ``demo/app.py`` (needs gradio).

Nothing is imported here, so that the package imports without the apps' optional dependencies.
"""
