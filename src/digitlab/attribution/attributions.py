"""Attribution maps with Captum: which of the 28x28 input pixels made the model say a class.

    maps = attribute(model, x, targets, "ig")   # x: normalised (N, 1, 28, 28); -> float32 (N, 28, 28)

Four methods, each the standard formulation of its paper, on the normalised input the model was trained on:
- ig: Integrated Gradients (Sundararajan et al. 2017), 32 steps from the background image (every pixel black,
  what MNIST's 0 becomes after the run's normalisation), all steps of all images in ONE batched forward and
  backward pass (internal_batch_size = steps x images): per-step calls cost ~30x on CPU. Signed.
- saliency: the absolute input gradient (Simonyan et al. 2014). One backward pass. Non-negative.
- occlusion: the drop in the class logit when a 7x7 patch is set to background, stride 3 (64 patches, one
  batch; 6x6 at stride 2 is 144 patches and 2.3x the time) (Zeiler & Fergus 2014). Signed.
- gradcam: Grad-CAM (Selvaraju et al. 2017) on the feature map of the last Conv2d whose output the rest of the
  network reads on at least 4x4 positions (cam_layer): the conv's output after the layers that keep its grid
  (BatchNorm, the activation), as the paper takes a conv layer's rectified maps, not the raw conv output, whose
  per-channel offsets (what a following BatchNorm subtracts) would swamp the weighted sum. Cells the network
  never reads (DigitNet's 7 -> 3 max pool skips its last conv's last row and column) are set to 0: their gradient
  is 0, but Grad-CAM's per-channel mean gradient would light them anyway, a corner the model never looks at.
  The grid is upsampled bilinearly with each cell at the centre of its receptive field on the input, and the
  map ReLU'd as in the paper. Needs such a convolution: MLPs and RNNs are refused.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitlab.errors import ConfigError
from digitlab.extras import require

METHODS = ("ig", "saliency", "occlusion", "gradcam")
METHOD_NAMES = {"ig": "Integrated Gradients", "saliency": "saliency", "occlusion": "occlusion",
                "gradcam": "Grad-CAM"}
IG_STEPS = 32
# (28 - 7) / 3 + 1 = 8 positions a side, the last flush with the edge: 64 patches, each pixel under 1 to 9 of them
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 7, 3
MIN_CAM_CELLS = 4  # Grad-CAM's grid must keep 4x4 read positions: 3x3 cells of 8+ pixels cannot part a digit's strokes
SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # layers that move positions, by kernel, stride and padding


class ExplainError(ConfigError):
    """An explanation that cannot be made as asked (method, target, model)."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def has_conv(model: nn.Module) -> bool:
    """Whether Grad-CAM has anything to look at (checked before any forward pass)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass(frozen=True)
class Step:
    """One leaf layer as a forward pass calls it, with its input and output grid (H, W); None where not 4-D."""

    module: nn.Module
    size_in: tuple[int, int] | None
    size_out: tuple[int, int] | None


@dataclass(frozen=True)
class CamLayer:
    """Where Grad-CAM reads a model: the layer whose output is the feature map (a Conv2d, or the BatchNorm or
    activation after it), the Conv2d, how many rows and columns of the map (from the top left) the rest of the
    network reads, and where cell (i, j) sits on the input: offset + stride * (i, j), in pixels."""

    layer: nn.Module
    conv: nn.Conv2d
    read: tuple[int, int]
    offset: tuple[float, float]
    stride: tuple[float, float]


_CAM_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> CamLayer: one probe per model


def grid(t: object) -> tuple[int, int] | None:
    """A layer output's (H, W), or None once it is no longer an image-like (N, C, H, W) tensor."""
    return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.dim() == 4 else None


def trace(model: nn.Module) -> list[Step]:
    """The leaf layers in the order one forward pass of a black 28x28 calls them (not trusting registration order),
    in eval mode so no BatchNorm statistics move."""
    steps: list[Step] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, i, o: steps.append(Step(m, grid(i[0]), grid(o)))) for m in leaves]
    was_training = model.training
    first = next(model.parameters(), None)
    probe = torch.zeros(1, 1, 28, 28) if first is None else torch.zeros(1, 1, 28, 28, dtype=first.dtype,
                                                                        device=first.device)
    try:
        with torch.no_grad():
            model.eval()(probe)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return steps


def pair(v: int | tuple | list) -> tuple[int, int]:
    """A layer's kernel, stride or padding as (rows, columns): PyTorch accepts one number for both."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def geometry(m: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) per axis of a Conv2d or pooling layer."""
    kernel, dilation = pair(m.kernel_size), pair(getattr(m, "dilation", 1))
    padding = m.padding
    if isinstance(padding, str):  # Conv2d's "valid" or "same" (stride 1)
        padding = tuple(0 if padding == "valid" else d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return kernel, pair(m.stride or m.kernel_size), pair(padding), dilation


def read_extent(after: list[Step], size: tuple[int, int]) -> tuple[int, int] | None:
    """How many rows and columns of a layer's output (grid `size`) the layers `after` it read: a pooling or strided
    layer whose windows stop short of the edge drops the rest. None where a layer's effect cannot be told."""
    spatial = []
    for step in after:
        if step.size_in is None or step.size_out is None or isinstance(step.module, (nn.Flatten, nn.Linear)):
            break  # flattened: every position left is read
        if isinstance(step.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            break  # global pooling reads everything
        if isinstance(step.module, SPATIAL):
            spatial.append(step)
        elif step.size_in != step.size_out:
            return None
    else:
        return None  # still a grid at the end: not a classifier this code knows
    last = [n - 1 for n in (spatial[-1].size_out if spatial else size)]
    for step in reversed(spatial):
        kernel, stride, padding, dilation = geometry(step.module)
        last = [min(n - 1, r * s - p + d * (k - 1))
                for n, r, k, s, p, d in zip(step.size_in, last, kernel, stride, padding, dilation)]
    return last[0] + 1, last[1] + 1


def placement(before: list[Step]) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Where the output cells of the last of `before` sit on the input: (offset, stride) per axis, from the
    kernels, strides and paddings on the way; None if a layer changes the grid in a way this cannot follow."""
    offset, scale = [0.0, 0.0], [1.0, 1.0]
    for step in before:
        if isinstance(step.module, SPATIAL):
            kernel, stride, padding, dilation = geometry(step.module)
            offset = [o + c * (d * (k - 1) / 2 - p) for o, c, k, p, d in zip(offset, scale, kernel, padding, dilation)]
            scale = [c * s for c, s in zip(scale, stride)]
        elif step.size_in != step.size_out:
            return None
    return (offset[0], offset[1]), (scale[0], scale[1])


def feature_map(steps: list[Step], i: int) -> int:
    """The step whose output is conv step i's feature map: the last of the layers right after it that keep its grid
    (BatchNorm, activation, dropout), stopping before a layer the forward pass calls twice (one hook, two maps)."""
    calls = [step.module for step in steps]
    j = i
    while (j + 1 < len(steps) and not isinstance(steps[j + 1].module, SPATIAL)
           and steps[j + 1].size_in == steps[j + 1].size_out == steps[i].size_out
           and calls.count(steps[j + 1].module) == 1):
        j += 1
    return j


def find_cam_layer(model: nn.Module, model_name: str) -> CamLayer:
    """The feature map of the last Conv2d that the network reads on at least MIN_CAM_CELLS x MIN_CAM_CELLS
    positions, or a one-line ExplainError saying why this model has no meaningful Grad-CAM."""
    if not has_conv(model):
        raise ExplainError(f"gradcam needs a convolutional layer and {model_name} has none; "
                           "use --method ig, saliency or occlusion")
    steps = trace(model)
    convs = [i for i, step in enumerate(steps) if isinstance(step.module, nn.Conv2d)]
    largest = (0, 0)
    for i in reversed(convs):
        j = feature_map(steps, i)
        read = read_extent(steps[j + 1:], steps[i].size_out)
        where = placement(steps[:i + 1])
        if read is None or where is None:
            raise ExplainError(f"gradcam cannot place {model_name}'s convolutions on the input (a layer changes "
                               "its grid in a way digitlab does not follow); use --method ig, saliency or occlusion")
        if min(read) >= MIN_CAM_CELLS:
            return CamLayer(steps[j].module, steps[i].module, read, *where)
        largest = max(largest, read)
    raise ExplainError(f"gradcam needs a convolution whose output is read on at least {MIN_CAM_CELLS}x"
                       f"{MIN_CAM_CELLS} positions, and the largest in {model_name} is {largest[0]}x{largest[1]}: "
                       "too coarse to point at a stroke; use --method ig, saliency or occlusion")


def cam_layer(model: nn.Module, model_name: str = "this model") -> CamLayer:
    """find_cam_layer, probed once per model."""
    if model not in _CAM_LAYERS:
        _CAM_LAYERS[model] = find_cam_layer(model, model_name)
    return _CAM_LAYERS[model]


def check_gradcam(model: nn.Module, model_name: str = "this model") -> CamLayer:
    """Where Grad-CAM would read the model; an ExplainError if it has no meaningful Grad-CAM."""
    return cam_layer(model, model_name)


def unread_zeroed(cam: torch.Tensor, read: tuple[int, int]) -> torch.Tensor:
    """The cells the network never reads set to 0: what they contribute to the class."""
    cam = cam.clone()
    cam[..., read[0]:, :] = 0
    cam[..., :, read[1]:] = 0
    return cam


def on_input(cam: torch.Tensor, layer: CamLayer) -> torch.Tensor:
    """(N, 1, h, w) Grad-CAM cells -> (N, 1, 28, 28): bilinear between the cells' receptive-field centres, the
    edge cell's value beyond them (as align_corners=False upsampling does at the border)."""
    axes = []
    for n, offset, stride in zip(cam.shape[-2:], layer.offset, layer.stride):
        cells = (torch.arange(28, dtype=torch.float32) - offset) / stride  # each input pixel in cell units
        axes.append(2 * cells / (n - 1) - 1 if n > 1 else torch.zeros(28))
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    where = torch.stack([xs, ys], dim=-1).expand(cam.shape[0], 28, 28, 2)
    return F.grid_sample(cam.float().contiguous(), where, mode="bilinear", padding_mode="border", align_corners=True)


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, model_name: str) -> torch.Tensor:
    """Grad-CAM on cam_layer's feature map, 0 where the network does not read it, placed on the 28x28 input."""
    captum = require("explain", "captum.attr", "explaining a prediction")
    where = cam_layer(model, model_name)
    cam = captum.LayerGradCam(model, where.layer).attribute(x, target=target, relu_attributions=True)
    return on_input(unread_zeroed(cam, where.read), where)


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
            maps = gradcam(model, x, target, model_name)
    out = maps.detach().float().reshape(n, 28, 28).numpy()
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
