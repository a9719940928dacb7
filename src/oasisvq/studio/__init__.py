"""OASISVQ Studio: ``oasisvq studio RUN``, a local web page to explore a trained run.

``backend`` holds every call into the rest of the package (plain functions over numpy
arrays, no Gradio); ``render`` turns arrays into pictures and HTML; ``app`` and the
``tab_*`` modules are the Gradio page. Gradio is an optional extra (``.[studio]``).
"""

import os

# Gradio reads this when it is imported: a local tool sends no telemetry.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
