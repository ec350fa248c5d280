"""What each layer makes of one input (CNN Explainer's view, for any registered model), via forward hooks.

    layers = layer_activations(explainer, image28)   # [LayerActivation(name, kind, maps (C, H, W))], call order

Recorded: every convolution, pooling, activation function (ReLU, sigmoid, tanh), recurrent layer and Linear
layer, in the order they run. BatchNorm, dropout and flatten are left out: they rescale or reshape what the
layer before produced and add nothing to look at. Each activation becomes images:
- a convolution or pooling output (C, H, W): one image per channel;
- an RNN/LSTM/GRU's outputs (T=28 row steps, H hidden units): one image, a row per step, the hidden state
  after reading each image row;
- a vector (a Linear or an activation after it, n units): one near-square image of its n values (one row
  for 64 or fewer, such as the logits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SHOWN = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ReLU, nn.Sigmoid,
         nn.Tanh, nn.GELU, nn.RNNBase, nn.Linear)
KINDS = {nn.Conv2d: "conv", nn.Linear: "linear", nn.RNNBase: "recurrent"}
API_CHANNELS, API_SIDE = 8, 14  # compact(): at most 8 channels a layer, at most 14x14 each, as 0..255


@dataclass
class LayerActivation:
    name: str  # the module's name in the model, e.g. "features.0"
    kind: str  # conv, pool, activation, recurrent, linear
    type: str  # the module's class, e.g. Conv2d
    shape: list[int]  # the output's shape for one input, batch dimension dropped
    maps: np.ndarray  # (C, H, W) float32: the output as images
    values: np.ndarray  # the output as the layer gave it, batch dimension dropped (for --json)

    def to_dict(self, decimals: int = 4) -> dict:
        return {"name": self.name, "kind": self.kind, "type": self.type, "shape": self.shape,
                "values": np.round(self.values.astype(np.float64), decimals).tolist()}


def kind_of(module: nn.Module) -> str:
    for cls, kind in KINDS.items():
        if isinstance(module, cls):
            return kind
    return "pool" if "Pool" in type(module).__name__ else "activation"


def as_images(output: torch.Tensor, module: nn.Module) -> np.ndarray:
    """One input's layer output as (C, H, W) images (see the module docstring)."""
    out = output[0].detach().float()
    if isinstance(module, nn.RNNBase):
        return out.reshape(1, *out.shape[-2:]).numpy()  # (1, T, H): a row per step
    if out.dim() == 3:
        return out.numpy()
    flat = out.reshape(-1)
    n = flat.numel()
    cols = n if n <= 64 else math.ceil(math.sqrt(n))  # a short vector (logits) reads best as one row
    rows = math.ceil(n / cols)
    padded = torch.full((rows * cols,), float("nan"))  # NaN marks the cells past the last unit (drawn blank)
    padded[:n] = flat
    return padded.reshape(1, rows, cols).numpy()


def layer_activations(explainer, image28: np.ndarray) -> list[LayerActivation]:
    """Every shown layer's output for one uint8 (28, 28) image, in the order the layers ran."""
    records: list[LayerActivation] = []
    hooks = []
    for name, module in explainer.model.named_modules():
        if not isinstance(module, SHOWN):
            continue

        def hook(mod, _inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output  # RNNs return (outputs, state)
            records.append(LayerActivation(name, kind_of(mod), type(mod).__name__, list(out.shape[1:]),
                                           as_images(out, mod), out[0].detach().float().numpy().copy()))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            explainer.model(explainer.to_input(np.asarray(image28, np.uint8)[None]))
    finally:
        for h in hooks:
            h.remove()
    return records


def downsample(maps: np.ndarray, side: int) -> np.ndarray:
    """(C, H, W) -> at most side x side per channel by area averaging (NaN cells stay NaN)."""
    c, h, w = maps.shape
    if h <= side and w <= side:
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps, np.float32))[None]
    size = (min(h, side), min(w, side))
    return torch.nn.functional.adaptive_avg_pool2d(t, size)[0].numpy()


def compact(layers: list[LayerActivation], channels: int = API_CHANNELS, side: int = API_SIDE) -> list[dict]:
    """Activations small enough to send with every explanation: the first `channels` channels of each layer,
    at most side x side, quantised to 0..255 over the layer's range (`low`/`high` give it back)."""
    out = []
    for layer in layers:
        maps = downsample(layer.maps[:channels], side)
        finite = maps[np.isfinite(maps)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = np.where(np.isfinite(maps), (maps - low) / (high - low or 1.0) * 255, 0)
        out.append({"name": layer.name, "kind": layer.kind, "type": layer.type, "shape": layer.shape,
                    "channels_shown": int(maps.shape[0]), "low": round(low, 6), "high": round(high, 6),
                    "maps": np.rint(scaled).astype(np.uint8).tolist()})
    return out
