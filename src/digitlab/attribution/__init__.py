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
from digitlab.attribution.attributions import METHODS, ExplainError
from digitlab.attribution.explainer import Explainer, Explanation, explain, explain_image

__all__ = ["METHODS", "ExplainError", "Explainer", "Explanation", "explain", "explain_image"]

