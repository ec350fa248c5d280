"""How fast and how trustworthy digitlab's explanations are, per method, with the shipped model by default.

    python benchmarks/explain.py                              # 100 test digits, threads 1 and 2
    python benchmarks/explain.py --run runs/<run> --images 50 --figures docs/explain

Prints markdown tables:
- latency: one explanation as the page asks for it (one image; maps for the predicted class and the runner-up,
  in one batched call), median and p90 of --repeats calls after a warm-up, per method and torch thread count;
  and the same through POST /api/explain in process (FastAPI's TestClient, JSON pixels, the prediction served
  by ONNX Runtime as `digitlab serve` does), which adds preprocessing, JSON and the server around it; with
  --url, through a running `digitlab serve` instead (its worker processes, as users meet it);
- model randomisation (Adebayo et al. 2018): Spearman rank correlation between the trained model's maps and
  those of the same model with every layer re-initialised, signed, absolute, and absolute over the ink pixels
  (mean over --images test digits; near 0 passes, near 1 fails); with --cascade, re-initialising the top 1, 2,
  ... layers (their cascading test), signed;
- deletion: the predicted class's mean probability as 0..50% of the pixels are set to background, most
  attributed first or at random; the area under each (lower for the map than for random = the map found what
  the model needs);
- ink share: the share of each map's positive mass within 2 pixels of the digit's ink (pixels above 64), beside
  the randomised model's maps' share and the chance level (the share of the image that is near the ink: what
  an evenly spread map scores).
Every method the page offers is checked (Grad-CAM where the model has a convolution it can use); --methods picks.
--figures DIR writes randomisation.png, deletion.png and ink.png there. The machine's load is printed beside the
times: on a shared machine they are upper bounds; compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from digitlab.data import load_dataset
from digitlab.attribution import Explainer
from digitlab.attribution.attributions import METHODS, ExplainError, check_gradcam
from digitlab.attribution.sanity import maps_for, parametrised_layers, randomised, run_checks, spearman


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, p90) of `repeats` calls in ms, after 3 warm-up calls."""
    for _ in range(3):
        fn(0)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def methods_for(explainer: Explainer) -> list[str]:
    """Every method the model allows; a model Grad-CAM refuses is said so, not silently left out."""
    try:
        check_gradcam(explainer.model, f"model {explainer.name!r}")
        return list(METHODS)
    except ExplainError as e:
        print(f"gradcam left out: {e}")
        return [m for m in METHODS if m != "gradcam"]


def latency(explainer: Explainer, digits: np.ndarray, methods: list[str], threads: list[int], repeats: int,
            run: str | None, url: str | None = None) -> None:
    print(f"\n### Latency: one explanation, predicted class + runner-up ({load()})\n")
    print("| method | torch threads | in process p50 / p90 (ms) | POST /api/explain p50 / p90 (ms) |")
    print("|---|---|---|---|")
    client = api_client(run, url)
    for n in threads:
        torch.set_num_threads(n)
        for method in methods:
            direct = timed(lambda i: explainer.explain(digits[i % len(digits)][None], method), repeats)
            pixels = [digits[i].astype(float).tolist() for i in range(min(len(digits), repeats))]

            def post(i: int) -> None:
                r = client.post(f"/api/explain?method={method}", json={"pixels": pixels[i % len(pixels)]})
                assert r.status_code == 200, r.text[:200]

            api = timed(post, repeats)
            print(f"| {method} | {n} | {direct[0]:.1f} / {direct[1]:.1f} | {api[0]:.1f} / {api[1]:.1f} |")


def api_client(run: str | None, url: str | None = None):
    """FastAPI's TestClient around the app in this process, or, with `url`, an HTTP client of a running
    `digitlab serve` (its worker processes, as users meet it)."""
    if url:
        import httpx

        return httpx.Client(base_url=url, timeout=30)
    from fastapi.testclient import TestClient

    from digitlab.predict import Predictor
    from digitlab.serve import create_app

    return TestClient(create_app(Predictor.from_run(run, runtime="onnx", threads=1)))


def sanity(explainer: Explainer, digits: np.ndarray, methods: list[str], figures: str | None) -> None:
    t = time.perf_counter()
    results = run_checks(explainer, digits, methods)
    seconds = time.perf_counter() - t
    print(f"\n### Sanity checks on {len(digits)} test digits ({seconds:.0f} s, {load()})\n")
    print("| method | Spearman trained vs randomised: signed | abs | abs, ink only | deletion AUC: attributed "
          "| random | ink share | randomised | chance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in results.items():
        cells = [r[f"spearman_{k}"] for k in ("signed", "abs", "abs_ink")]
        shown = " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells)
        constant = f" ({r['constant_maps']} randomised maps constant)" if r["constant_maps"] else ""
        print(f"| {m}{constant} | {shown} | {r['auc_attributed']:.3f} | {r['auc_random']:.3f} | {ink_cells(r)} |")
    if figures:
        from digitlab.attribution import figures as figs

        os.makedirs(figures, exist_ok=True)
        for name, fig in (("randomisation.png", figs.randomisation_figure(results)),
                          ("deletion.png", figs.deletion_figure(results)), ("ink.png", figs.ink_figure(results))):
            print(f"wrote {figs.save(fig, os.path.join(figures, name), tight=True)}")


def percent(share: float | None) -> str:
    """A share as the table shows it; n/a where no map had positive mass."""
    return "n/a" if share is None else f"{100 * share:.1f}%"


def ink_cells(r: dict) -> str:
    """The ink share (maps with no positive mass counted), the randomised model's, and the chance level."""
    empty = r["ink_maps_without_mass"]
    note = f" ({empty} maps all <= 0)" if empty else ""
    return f"{percent(r['ink_share'])}{note} | {percent(r['ink_share_randomised'])} | {percent(r['ink_chance'])}"


def cascade(explainer: Explainer, digits: np.ndarray, methods: list[str]) -> None:
    layers = parametrised_layers(explainer.model)
    targets = explainer.probabilities(digits).argmax(1)
    print(f"\n### Cascading randomisation: signed Spearman after re-initialising the top k of {len(layers)} "
          "layers\n")
    print("| method | " + " | ".join(f"k={k}" for k in range(1, len(layers) + 1)) + " |")
    print("|---|" + "---|" * len(layers))
    for method in methods:
        trained = maps_for(explainer, explainer.model, digits, targets, method)
        row = []
        for k in range(1, len(layers) + 1):
            model = explainer.memory_format_model(randomised(explainer.model, top=k))
            random = maps_for(explainer, model, digits, targets, method)
            rs = [spearman(a, b) for a, b in zip(trained, random)]
            row.append(f"{np.nanmean(rs):.2f}" if np.isfinite(rs).any() else "n/a")
        print(f"| {method} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run folder or .safetensors (default: the shipped model)")
    parser.add_argument("--images", type=int, default=100, help="test digits for the sanity checks")
    parser.add_argument("--repeats", type=int, default=31, help="timed calls per method")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    parser.add_argument("--figures", default=None, metavar="DIR", help="write randomisation.png, deletion.png")
    parser.add_argument("--cascade", action="store_true", help="also the cascading randomisation test")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--url", default=None, help="time POST /api/explain on this running `digitlab serve` "
                                                    "(e.g. http://127.0.0.1:8000) instead of in process")
    parser.add_argument("--skip-sanity", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="methods to check and time (default: every one the model allows)")
    args = parser.parse_args()
    explainer = Explainer.from_run(args.run)
    ds = load_dataset(explainer.dataset, progress=False)
    digits = ds.test_images[:args.images].numpy()
    methods = [m for m in methods_for(explainer) if args.methods is None or m in args.methods]
    print(f"model {explainer.name} ({args.run or 'shipped'}), {os.cpu_count()} CPUs, torch {torch.__version__}")
    if not args.skip_latency:
        latency(explainer, digits, methods, args.threads, args.repeats, args.run, args.url)
    if args.skip_sanity:
        return
    torch.set_num_threads(min(args.threads))
    sanity(explainer, digits, methods, args.figures)
    if args.cascade:
        cascade(explainer, digits[:min(len(digits), 30)], methods)


if __name__ == "__main__":
    main()
