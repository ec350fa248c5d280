"""Layer-by-layer shape summary: run one 1x1x28x28 input and record each leaf module's output."""
from __future__ import annotations

import torch

from digitlab.models import count_parameters


def layer_summary(model: torch.nn.Module) -> list[dict]:
    """One row per leaf module in call order: name, type, output shape, parameter count."""
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
            model(torch.zeros(1, 1, 28, 28))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(model_name: str, model: torch.nn.Module) -> str:
    """The summary as an aligned text table with a total."""
    rows = layer_summary(model)
    lines = [f"{model_name}: input (1, 1, 28, 28)", f"{'layer':<28}{'type':<18}{'output shape':<22}{'params':>12}"]
    lines.append("-" * len(lines[1]))
    for r in rows:
        shape = "(" + ", ".join(map(str, r["output_shape"])) + ")"
        lines.append(f"{r['name']:<28}{r['type']:<18}{shape:<22}{r['parameters']:>12,}")
    lines.append("-" * len(lines[1]))
    lines.append(f"{'total parameters':<68}{count_parameters(model):>12,}")
    return "\n".join(lines)
