"""Applications built on the :class:`~mask2former.Predictor`, one floor above it and
:mod:`mask2former.utils` (image reading, result export, visualisation):

- :mod:`mask2former.apps.cli`: the command-line demo behind ``demo/demo.py`` (images, videos,
  a webcam), its options and output naming;
- :mod:`mask2former.apps.web`: the web demo behind ``demo/app.py`` (needs gradio);
- :mod:`mask2former.apps.browser`: the web demo in Chromium, for its test and screenshot.

Nothing is imported here, so that the package imports without the apps' optional dependencies.
"""
