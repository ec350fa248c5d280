"""TensorBoard in every run: event files in the run folder, so `tensorboard --logdir runs` shows every run (sweep
trials included) side by side, named by their folders.

    loss/{train,val,test}  accuracy/{train,val,test}    one point per evaluation, at its optimiser step
    optim/lr  speed/images_per_s  speed/data_fraction
    HParams tab: the run's recipe (every TrainConfig field, model_args.* one by one) against the last
                 accuracy/* and loss/* values; written when the run starts, so pruned or killed trials show too
    at the end:  the confusion matrix and the most confident mistakes of the last evaluation, as images;
                 config.json as text

The writer is torch.utils.tensorboard's (it needs the `tensorboard` package: the `track` extra). A resumed run
purges the points it is about to write again, so its curves have no doubled tail.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from digitlab.events import Subscriber

if TYPE_CHECKING:
    from digitlab.training import RunState, TrainResult

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "loss/test": "test_loss",
           "accuracy/train": "train_accuracy", "accuracy/val": "val_accuracy", "accuracy/test": "test_accuracy",
           "optim/lr": "lr", "speed/images_per_s": "images_per_s", "speed/data_fraction": "data_fraction"}
HPARAM_METRICS = ("accuracy/val", "accuracy/test", "loss/val", "loss/test")  # what the HParams tab sets against
MISTAKES_SHOWN = 25


def tensorboard_subscriber(run: RunState) -> list[Subscriber]:
    """[TensorBoard(run)], or [] with one line saying how to get it when the package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - the check that it imports
    except ImportError:
        run.log("note: no TensorBoard event files for this run: the tensorboard package is not installed "
                "(pip install 'digitlab[track]'; --no-tensorboard silences this)")
        return []
    return [TensorBoard()]


def hparams_of(cfg_dict: dict) -> dict[str, float | int | str | bool]:
    """A run's recipe as HParams values: model_args flattened to model_args.KEY, None as 'none', the rest as is
    (or as JSON text when TensorBoard cannot show the type)."""
    out: dict[str, float | int | str | bool] = {}
    for key, value in cfg_dict.items():
        if key == "model_args":
            out.update({f"model_args.{k}": v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                        for k, v in value.items()})
        elif value is None:
            out[key] = "none"
        elif isinstance(value, (int, float, str, bool)):
            out[key] = value
        else:
            out[key] = json.dumps(value)
    return out


class TensorBoard(Subscriber):
    """Writes the run's scalars, hparams and final figures as TensorBoard events in the run folder."""

    def __init__(self):
        self.writer = None
        self.closed_with = "STATUS_FAILURE"  # until on_finish says otherwise: a stopped run is not a success

    def on_start(self, run: RunState) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # A resumed run drops the points written past its checkpoint (a killed run's mid-epoch evaluations, which
        # it is about to write again); the checkpoint's own step stays.
        purge = run.progress.step + 1 if run.progress.step else None
        self.writer = SummaryWriter(log_dir=str(run.run_dir), purge_step=purge)
        cfg = asdict(run.cfg)
        experiment, start, _end = hparams(hparams_of(cfg), {tag: 0.0 for tag in HPARAM_METRICS})
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", f"```\n{json.dumps(cfg, indent=2)}\n```", run.progress.step)
        self.writer.flush()

    def on_evaluation(self, run: RunState, row: dict, epoch_end: bool) -> None:
        for tag, key in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], int(row["step"]))
        self.writer.flush()  # a live `tensorboard` sees each point as it comes

    def on_finish(self, run: RunState, result: TrainResult) -> None:
        self.closed_with = "STATUS_SUCCESS"
        scored = run.last_scored
        if scored is None:  # under torchrun each rank scored a shard: no whole-set figures
            return
        from digitlab.evaluation import metrics_from_logits, most_confident_mistakes
        from digitlab.plots import confusion_figure, grid_figure

        name, logits, images, labels = scored
        classes = run.meta["classes"]
        metrics = metrics_from_logits(logits, labels, len(classes))
        step = run.progress.step
        self.writer.add_figure(f"final/confusion_{name}", confusion_figure(
            metrics["confusion"], classes, title=f"{run.run_dir.name}: {name} set, last evaluation"), step)
        mistakes = most_confident_mistakes(logits, labels, k=MISTAKES_SHOWN)
        if mistakes:
            titles = [f"{classes[m['true']]} -> {classes[m['predicted']]} {m['probability']:.0%}" for m in mistakes]
            self.writer.add_figure(f"final/mistakes_{name}", grid_figure(
                images[[m["index"] for m in mistakes]], titles, title="most confident mistakes (true -> predicted)"),
                step)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.file_writer.add_summary(session_end(self.closed_with))
        self.writer.close()
        self.writer = None


def session_end(status: str):
    """The HParams session-end summary with `status` (torch's hparams() only writes STATUS_SUCCESS)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status)),
                                version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                      content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
