"""Attribution maps with Captum: which of the 28x28 input pixels made the model say a class.

    maps = attribute(model, x, targets, "ig")   # x: normalised (N, 1, 28, 28); -> float32 (N, 28, 28)

Four methods, each the standard formulation of its paper, on the normalised input the model was trained on:
- ig: Integrated Gradients (Sundararajan et al. 2017), 32 steps from the background image (every pixel black,
  what MNIST's 0 becomes after the run's normalisation), all steps of all images in ONE batched forward and
  backward pass (internal_batch_size = steps x images): per-step calls cost ~30x on CPU. Signed.
- saliency: the absolute input gradient (Simonyan et al. 2014). One backward pass. Non-negative.
- occlusion: the drop in the class logit when a 7x7 patch is set to background, stride 3 (64 patches, one
  batch; 6x6 at stride 2 is 144 patches and 2.3x the time) (Zeiler & Fergus 2014). Signed.
- gradcam: Grad-CAM (Selvaraju et al. 2017) on the last Conv2d, found by walking the model, upsampled from
  its grid to 28x28 bilinearly; ReLU'd as in the paper. Needs a convolution: MLPs and RNNs are refused.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from digitlab.errors import ConfigError
from digitlab.extras import require

METHODS = ("ig", "saliency", "occlusion", "gradcam")
METHOD_NAMES = {"ig": "Integrated Gradients", "saliency": "saliency", "occlusion": "occlusion",
                "gradcam": "Grad-CAM"}
IG_STEPS = 32
# (28 - 7) / 3 + 1 = 8 positions a side, the last flush with the edge: 64 patches, each pixel under 1 to 9 of them
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 7, 3


class ExplainError(ConfigError):
    """An explanation that cannot be made as asked (method, target, model)."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def last_conv(model: nn.Module) -> nn.Conv2d | None:
    """The Conv2d that runs last in registration order (the model zoo registers layers in call order)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def check_gradcam(model: nn.Module, model_name: str = "this model") -> nn.Conv2d:
    conv = last_conv(model)
    if conv is None:
        raise ExplainError(f"gradcam needs a convolutional layer and {model_name} has none; "
                           "use --method ig, saliency or occlusion")
    return conv


def attribute(model: nn.Module, x: torch.Tensor, targets, method: str, background: float,
              model_name: str = "this model") -> np.ndarray:
    """Attribution maps (N, 28, 28) float32 of the normalised batch `x` (N, 1, 28, 28) for `targets` (N ints).
    `background` is the normalised value of a black pixel: IG's baseline and what occlusion paints."""
    check_method(method)
    captum = require("explain", "captum.attr", "explaining a prediction")
    model.eval()
    x = x.detach().clone().float().requires_grad_()  # captum warns if it has to ask for gradients itself
    target = torch.as_tensor(list(targets), dtype=torch.long)
    n = x.shape[0]
    with torch.enable_grad():
        if method == "ig":
            ig = captum.IntegratedGradients(model)
            maps = ig.attribute(x, baselines=torch.full_like(x, background), target=target, n_steps=IG_STEPS,
                                internal_batch_size=IG_STEPS * n)
        elif method == "saliency":
            maps = captum.Saliency(model).attribute(x, target=target, abs=True)
        elif method == "occlusion":
            per_image = ((28 - OCCLUSION_WINDOW) // OCCLUSION_STRIDE + 1) ** 2
            maps = captum.Occlusion(model).attribute(
                x, sliding_window_shapes=(1, OCCLUSION_WINDOW, OCCLUSION_WINDOW),
                strides=(1, OCCLUSION_STRIDE, OCCLUSION_STRIDE), baselines=background, target=target,
                perturbations_per_eval=per_image)
        else:
            conv = check_gradcam(model, model_name)
            cam = captum.LayerGradCam(model, conv).attribute(x, target=target, relu_attributions=True)
            maps = captum.LayerAttribution.interpolate(cam, (28, 28), interpolate_mode="bilinear")
    out = maps.detach().float().reshape(n, 28, 28).numpy()
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
