"""Layer-by-layer shape summary: run one input of the model's shape (1x1x28x28 for MNIST's) and record each leaf
module's output."""
from __future__ import annotations

import torch

from digitlab.models import count_parameters
from digitlab.shapes import MNIST_SHAPE, InputShape


def example(shape: InputShape) -> torch.Tensor:
    """One blank image of `shape`, as a batch: what the summary runs."""
    return torch.zeros(1, shape.in_chans, *shape.image_size)


def layer_summary(model: torch.nn.Module, shape: InputShape = MNIST_SHAPE) -> list[dict]:
    """One row per leaf module in call order: name, type, output shape, parameter count; for a model built for
    `shape` (create_model's num_classes, in_chans, image_size)."""
    rows: list[dict] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def hook(mod, _inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output  # RNNs return (output, state)
            rows.append({"name": name, "type": type(mod).__name__, "output_shape": list(out.shape),
                         "parameters": count_parameters(mod)})

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example(shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(model_name: str, model: torch.nn.Module, shape: InputShape = MNIST_SHAPE) -> str:
    """The summary as an aligned text table with a total."""
    rows = layer_summary(model, shape)
    lines = [f"{model_name}: input {tuple(example(shape).shape)}", f"{'layer':<28}{'type':<18}{'output shape':<22}{'params':>12}"]
    lines.append("-" * len(lines[1]))
    for r in rows:
        shape = "(" + ", ".join(map(str, r["output_shape"])) + ")"
        lines.append(f"{r['name']:<28}{r['type']:<18}{shape:<22}{r['parameters']:>12,}")
    lines.append("-" * len(lines[1]))
    lines.append(f"{'total parameters':<68}{count_parameters(model):>12,}")
    return "\n".join(lines)
