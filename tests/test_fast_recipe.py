"""`fast`'s machinery: a run can skip drawing curves.png (config `plot`), and everything else in its
run folder is still written."""
from __future__ import annotations

from digitlab.config import make_config
from digitlab.training import train

from helpers import mnist_slice


def tiny_run(mnist, out, **fields):
    cfg = make_config(model="digitnet", model_args={"width": 2, "depth": 1}, batch_size=64, epochs=1, max_steps=2,
                      out=str(out), threads=1, **fields)
    return train(cfg, dataset=mnist_slice(mnist, 256, 200), progress=False, log=lambda *_: None)


def test_no_plot_skips_curves_png_only(mnist, tmp_path):
    run = tiny_run(mnist, tmp_path / "run", plot=False).run_dir
    for name in ("config.json", "metrics.csv", "last.safetensors", "last.state.pt", "best.safetensors"):
        assert (run / name).is_file(), name
    assert not (run / "curves.png").exists()


def test_plot_is_on_by_default(mnist, tmp_path):
    run = tiny_run(mnist, tmp_path / "run").run_dir
    assert (run / "curves.png").is_file()
