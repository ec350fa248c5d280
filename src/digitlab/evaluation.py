"""Evaluation: numbers only, never printing. The CLI and plots decide how to show them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from digitlab.normalize import normalize
from digitlab.shapes import MNIST_SHAPE


SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # the four 1-pixel shifts test-time augmentation adds


def tta_views(x: torch.Tensor, mirror: bool) -> list[torch.Tensor]:
    """The views test-time augmentation averages over: the batch and its four 1-pixel shifts and, with mirror,
    the left-right mirror image of each of the five (for data whose training flipped images: clothes, not
    digits, whose mirror images are other shapes)."""
    views = [x] + [torch.roll(x, shifts=shift, dims=(2, 3)) for shift in SHIFTS]
    return views + [view.flip(-1) for view in views] if mirror else views


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, normalization: str,
                   batch_size: int = 1000, device: torch.device | str = "cpu",
                   tta: bool = False, mirror: bool = False, num_classes: int = MNIST_SHAPE.num_classes) -> torch.Tensor:
    """Logits (N, classes) on CPU for uint8 images (N, H, W) or (N, C, H, W), in batches, in eval mode; with tta,
    the mean over tta_views(mirror) of each batch (shifts cost little and help the bigger nets a little).
    `num_classes` only shapes the answer for no images at all (LoadedModel.shape.num_classes)."""
    was_training = model.training
    model.eval()
    outputs = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i:i + batch_size].to(device), normalization)
        if tta:
            views = tta_views(x, mirror)
            logits = sum(model(view).float() for view in views) / len(views)
        else:
            logits = model(x).float()
        outputs.append(logits.cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, num_classes)


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict:
    """Loss, accuracy, per-class accuracy, precision, recall and F1, and the confusion matrix (rows: true,
    columns: predicted); over the logits' classes unless `num_classes` says."""
    num_classes = logits.shape[1] if num_classes is None else num_classes
    labels = labels.cpu()
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (predicted == labels).float().mean().item(),
        "count": int(labels.numel()),
        "per_class_accuracy": per_class.tolist(),
        **precision_recall_f1(confusion),
        "confusion": confusion.tolist(),
    }


def precision_recall_f1(confusion: torch.Tensor) -> dict:
    """Per class, from a confusion matrix (rows: true): precision (right among those predicted as the class),
    recall (right among the class's images: its accuracy) and F1, their harmonic mean; 0 where undefined, as
    scikit-learn's zero_division=0."""
    hits = confusion.diag().double()
    precision = hits / confusion.sum(0).clamp(min=1).double()
    recall = hits / confusion.sum(1).clamp(min=1).double()
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    return {"per_class_precision": precision.tolist(), "per_class_recall": recall.tolist(),
            "per_class_f1": f1.tolist(), "macro_f1": f1.mean().item()}


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalization: str, batch_size: int = 1000,
             device: torch.device | str = "cpu", tta: bool = False) -> dict:
    """Full metrics of `model` on uint8 images and their labels; `normalization` is the run's (LoadedModel's),
    required: a default would silently feed a model trained on other inputs the wrong numbers."""
    logits = predict_logits(model, images, normalization, batch_size, device, tta)
    return metrics_from_logits(logits, labels)


def most_confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, k: int = 25) -> list[dict]:
    """The k wrong predictions the model was surest of: index, true, predicted, probability."""
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)[:k]
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "probability": float(confidence[i])} for i in wrong[order]]
