"""Explanations of a trained model: what it looks at, what each layer makes of an input, how it sorts a dataset.

One module, one job:
- attributions.py: Integrated Gradients, saliency, occlusion and Grad-CAM with Captum (the `explain` extra);
- explainer.py: Explainer (a model with its normalisation), Explanation, explain() and explain_image() (the
  plain image -> dict function behind POST /api/explain);
- activations.py: each layer's output for one input, via forward hooks;
- embedding.py: penultimate-layer features of a test set, PCA then t-SNE to 2-D;
- sanity.py: the model-randomisation, deletion and ink-share checks;
- figures.py: the PNGs.
"""
import sys
import types

from digitlab.explain.attributions import METHODS, ExplainError
from digitlab.explain.explainer import Explainer, Explanation, explain, explain_image

__all__ = ["METHODS", "ExplainError", "Explainer", "Explanation", "explain", "explain_image"]


class _CallablePackage(types.ModuleType):
    """`digitlab.explain(...)` is the function, and `digitlab.explain` is also this package: once the package is
    imported, Python binds the name `explain` in digitlab to it, so the package itself answers the call."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
