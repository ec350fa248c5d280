"""`digitlab explain`: attributions (heat maps), layer activations, or the test set's embedding map. The heat maps
and layers are about the images given, so they go in the current folder; the embedding map is about a run's test
set, so it goes in the run folder (as eval's figures do); -o puts any of them elsewhere."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from digitlab.commands.inputs import expand_inputs, split_run_and_files
from digitlab.errors import ConfigError, RunError


MAX_EXPLAIN_IMAGES = 100  # rows of one explain PNG; more would be a figure no one can read


def cmd_explain(args: argparse.Namespace) -> int:
    from digitlab.attribution import Explainer

    run, files = split_run_and_files(args.inputs)
    if args.layers and args.embedding:
        raise ConfigError("give either --layers or --embedding, not both")
    if args.embedding:
        if files or args.test_index is not None:
            raise ConfigError("--embedding maps the run's test set; give no image files or --test-index")
        return explain_embedding(Explainer.from_run(run, args.checkpoint), args, embedding_path(run, args.output))
    if args.test_index is None and not files:
        raise ConfigError("give image files or folders to explain, or --test-index N...")
    if args.test_index is not None and files:
        raise ConfigError("give either --test-index or image files, not both")
    paths = expand_inputs(files)  # every input checked before the model is loaded
    count = len(paths) + len(args.test_index or [])
    if count > MAX_EXPLAIN_IMAGES:
        raise ConfigError(f"explain takes at most {MAX_EXPLAIN_IMAGES} images at a time, got {count}")
    if args.layers and count != 1:
        raise ConfigError(f"--layers shows one input; give one image or one --test-index, not {count}")
    explainer = Explainer.from_run(run, args.checkpoint)
    explainer.check_method(args.method)  # before any image is read: gradcam on an MLP, say, fails at once
    explainer.check_target(args.target)
    images, originals, names, truths = explain_inputs(explainer, paths, args)
    if args.layers:
        return explain_layers(explainer, images[0], names[0], args)
    explanations = explainer.explain(np.stack(images), args.method, args.target)
    if args.json:
        items = [{"input": name, **({"true": t} if t is not None else {}), **e.to_dict()}
                 for name, t, e in zip(names, truths, explanations)]
        print(json.dumps({"model": explainer.name, "dataset": explainer.dataset, "method": args.method,
                          "explanations": items}, allow_nan=False))
    else:
        for name, e in zip(names, explanations):
            why = ", ".join(f"{e.classes[t]} {e.probabilities[t]:.1%}" for t in e.targets)
            print(f"{name}: predicted {e.classes[e.label]} ({why})")
    if args.output or not args.json:
        from digitlab.attribution import figures

        rows = [(o, e, n) for o, e, n in zip(originals, explanations, names)]
        path = figures.save(figures.attribution_figure(rows, args.method), args.output or "explain.png")
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def explain_inputs(explainer, paths: list[Path], args: argparse.Namespace):
    """The 28x28 images to explain (through digitlab.preprocess, as `predict` does), the inputs as given (for
    the figure), their names, and their true labels where known (test images)."""
    from digitlab.predict import Predictor
    from digitlab.preprocess import load_image

    if args.test_index is not None:
        from digitlab.data import load_dataset

        ds = load_dataset(explainer.dataset, args.data_dir, progress=False)
        n = ds.test_images.shape[0]
        for i in args.test_index:
            if not 0 <= i < n:
                raise ConfigError(f"--test-index must be in 0..{n - 1}, got {i}")
        images = [ds.test_images[i].numpy() for i in args.test_index]
        truths = [int(ds.test_labels[i]) for i in args.test_index]
        names = [f"test #{i} (true {ds.classes[t]})" for i, t in zip(args.test_index, truths)]
        return images, [None] * len(images), names, truths
    images = [Predictor.to_input(p) for p in paths]
    originals = [np.asarray(load_image(p).convert("RGB")) for p in paths]
    return images, originals, [str(p) for p in paths], [None] * len(paths)


def explain_layers(explainer, image: np.ndarray, name: str, args: argparse.Namespace) -> int:
    from digitlab.attribution.activations import layer_activations

    layers = layer_activations(explainer, image)
    probs = explainer.probabilities(image[None])[0]
    label = int(probs.argmax())
    if args.json:
        print(json.dumps({"model": explainer.name, "input": name, "label": label,
                          "probabilities": [round(float(p), 6) for p in probs],
                          "layers": [layer.to_dict() for layer in layers]}, allow_nan=False))
    else:
        for layer in layers:
            print(f"{layer.name:<16}{layer.type:<12}{str(tuple(layer.shape)):<16}")
    if args.output or not args.json:
        from digitlab.attribution import figures

        title = f"{explainer.name}: {name}, predicted {explainer.classes[label]} ({probs[label]:.1%})"
        fig = figures.layers_figure(layers, image, title, explainer.classes, probs)
        path = figures.save(fig, args.output or "layers.png", tight=True)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def embedding_path(run: str | None, output: str | None) -> Path:
    """Where the embedding map goes: -o, else the run folder (a map of its test set is about the run, as eval's
    figures are), else (the shipped model, a lone .safetensors or .onnx file) the current folder."""
    if output:
        return Path(output)
    return Path(run) / "embedding.png" if run is not None and Path(run).is_dir() else Path("embedding.png")


def explain_embedding(explainer, args: argparse.Namespace, path: Path) -> int:
    from digitlab.data import load_dataset
    from digitlab.attribution.embedding import embed

    ds = load_dataset(explainer.dataset, args.data_dir, progress=False)
    emb = embed(explainer, ds.test_images.numpy(), ds.test_labels.numpy(), args.limit)
    wrong = int((emb.labels != emb.predictions).sum())
    out = sys.stderr if args.json else sys.stdout
    print(f"{len(emb.labels)} {explainer.dataset} test images, {wrong} misclassified; features "
          f"{emb.seconds['features']:.1f} s, PCA {emb.seconds['pca']:.1f} s, t-SNE {emb.seconds['tsne']:.1f} s",
          file=out)
    if args.json:
        print(json.dumps({"model": explainer.name, "dataset": explainer.dataset, **emb.to_dict(explainer.classes)},
                         allow_nan=False))
    if args.output or not args.json:
        from digitlab.attribution import figures

        title = (f"{explainer.name}: penultimate-layer features of {len(emb.labels)} {explainer.dataset} test "
                 f"images (t-SNE), {wrong} misclassified (true→predicted)")
        fig = figures.embedding_figure(emb.points, emb.labels, emb.predictions, explainer.classes, title)
        try:
            path = figures.save(fig, path, tight=True)
        except OSError as e:
            raise RunError(f"cannot write {path} ({e.strerror or e}); choose another file with -o") from None
        print(f"wrote {path}", file=out)
    return 0
