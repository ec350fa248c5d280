"""`digitlab data`, `digitlab models`, `digitlab summary`: what datasets, models and presets there are."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from digitlab.errors import ConfigError


def cmd_data(args: argparse.Namespace) -> int:
    from digitlab.data import dataset_info, load_dataset

    ds = load_dataset(args.dataset, args.data_dir)
    if args.data_command == "info":
        info = dataset_info(ds)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"{info['name']}: {info['train_size']:,} train + {info['test_size']:,} test images, "
              f"{info['image_shape'][0]}x{info['image_shape'][1]} {info['dtype']}, "
              f"pixel mean {info['train_pixel_mean']} std {info['train_pixel_std']} (train, in [0,1])")
        print(f"{'class':<6}{'name':<14}{'train':>8}{'test':>8}")
        for i, name in enumerate(info["classes"]):
            print(f"{i:<6}{name:<14}{info['train_counts'][i]:>8,}{info['test_counts'][i]:>8,}")
        print("files:")
        for stem, path in info["sources"].items():
            print(f"  {stem:<26}{path}")
        return 0
    import torch

    from digitlab.plots import plot_grid

    if args.n < 1:
        raise ConfigError("-n must be at least 1")
    images, labels = ds.split(args.split)
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.n]
    titles = [ds.classes[int(labels[i])] for i in idx]
    out = plot_grid(images[idx], titles, Path(args.output), title=f"{ds.name} {args.split}")
    print(f"wrote {out} ({len(idx)} {ds.name} {args.split} image{'s' * (len(idx) != 1)})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from digitlab.models import count_parameters, create_model, get_builder, list_models
    from digitlab.presets import PRESETS

    models = [{"name": n, "parameters": count_parameters(create_model(n)),
               "description": (get_builder(n).__doc__ or "").strip()} for n in list_models()]
    presets = [{"name": n, "model": p.config["model"], "model_args": p.config.get("model_args", {}),
                "parameters": count_parameters(create_model(p.config["model"], **p.config.get("model_args", {}))),
                "dataset": p.config.get("dataset", "mnist"), "epochs": p.config.get("epochs"),
                "reference": p.reference, "measured": p.measured, "own_recipe": p.own_recipe,
                "selection": p.selection,
                "description": p.description} for n, p in PRESETS.items()]
    if args.json:
        print(json.dumps({"models": models, "presets": presets}, indent=2))
        return 0
    print("models (default options):")
    for m in models:
        print(f"  {m['name']:<10}{m['parameters']:>12,} params  {m['description']}")
    print("\npresets (digitlab train --preset NAME); `published`: what the recipe's source reports, `measured`: "
          "what digitlab measured (its own recipes, and faithful ones whose source publishes no figure):")
    for p in presets:
        figures = [f"published: {p['reference'] or 'none'}"] if not p["own_recipe"] else []
        figures += [f"measured: {p['measured']}"] if p["measured"] else []
        print(f"  {p['name']:<16}{p['model']:<9}{p['parameters']:>12,} params  {p['dataset']:<14}"
              f"{p['epochs']:>3} ep  {'; '.join(figures)}")
        print(f"  {'':<16}model selection: {p['selection']}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from digitlab.config import parse_model_args
    from digitlab.models import check_model_args, create_model, list_models
    from digitlab.presets import PRESETS
    from digitlab.summary import format_summary

    name, model_args = args.model, {}
    if name in PRESETS and name not in list_models():
        name, model_args = PRESETS[name].config["model"], dict(PRESETS[name].config.get("model_args", {}))
    if args.model_args:
        model_args.update(parse_model_args(args.model_args))
    check_model_args(name, model_args)  # on the meta device first: a model too big to build is one line
    print(format_summary(name, create_model(name, **model_args)))
    return 0
