"""Model selection: which evaluation the `best` checkpoint holds, and when target_accuracy stops a run.

One rule, in one place, read by the training loop, its log lines, TrainResult and `digitlab train`'s summary:

    validation  cfg.val_size > 0: the best checkpoint and target_accuracy go by validation accuracy; the test
                set is only reported
    test        no hold-out (the faithful recipes' protocol, as their sources did): they go by TEST accuracy, so
                the best epoch's test figure is optimistic, and every line that shows it says so
    nothing     cfg.fixed_schedule: nothing is selected, so the run has no best.safetensors: its model is
                last.safetensors, and `best` names it (a schedule tuned on a hold-out, then trained on every
                training image)
"""
from __future__ import annotations

from dataclasses import dataclass

from digitlab.config import TrainConfig


@dataclass(frozen=True)
class Selection:
    """The selection rule of one run."""

    on: str  # "validation" | "test" | "nothing"
    target: float = 0.0  # target_accuracy: stop once the selection accuracy reaches it; 0: never

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> "Selection":
        if cfg.fixed_schedule:
            return cls("nothing", cfg.target_accuracy)
        return cls("validation" if cfg.val_size else "test", cfg.target_accuracy)

    @property
    def key(self) -> str:
        """The metrics column best accuracies are read from (the last epoch's test figure when nothing is
        selected, so a fixed schedule's `best_accuracy` is what it reports)."""
        return "val_accuracy" if self.on == "validation" else "test_accuracy"

    def score(self, row: dict) -> float | None:
        return row.get(self.key)

    @property
    def keeps_best(self) -> bool:
        """Whether the run writes best.safetensors: only when something is selected, so that the file's name never
        claims a choice that was not made."""
        return self.on != "nothing"

    def improves(self, row: dict, best: float) -> bool:
        """Whether `row` replaces the best checkpoint: a strictly better score, or always with nothing selected
        (every epoch's weights become `best`, so it ends as the last epoch's)."""
        if self.on == "nothing":
            return True
        score = self.score(row)
        return score is not None and score > best

    def reached(self, row: dict) -> bool:
        """Whether row meets target_accuracy (never without one)."""
        score = self.score(row)
        return bool(self.target) and score is not None and score >= self.target

    def best_row(self, history: list[dict], best: float) -> dict:
        """The evaluation the best checkpoint was saved at: the first to reach `best` (the last, with nothing
        selected); {} for an empty history."""
        if self.on == "nothing" or not history:
            return history[-1] if history else {}
        return next((row for row in history if row[self.key] == best), {})

    def progress_words(self, best: float) -> str:
        """The end of an epoch line: the best selection accuracy so far ('' with nothing selected)."""
        if self.on == "nothing":
            return ""
        return f" | best {'val' if self.on == 'validation' else 'test'} {best:.2%}"

    def note(self, train_images: int, held_out: int, train_size: int, test_reported: bool = True) -> str:
        """The line a run starts with: what picks its best checkpoint, and what is only reported."""
        if self.on == "nothing":
            held = " and the validation hold-out are" if held_out else " is"
            return (f"model selection: none, a fixed schedule: the run's model is last.safetensors, trained on "
                    f"{train_images:,} images (no best.safetensors); the test set{held} only reported")
        if self.on == "validation":
            reported = "the test set is only reported" if test_reported else "the test set is not read"
            return (f"model selection: validation accuracy on {held_out:,} of the {train_size:,} training images, "
                    f"held out (best checkpoint, target_accuracy); {reported}")
        return ("model selection: no validation split (val_size 0): the best checkpoint and target_accuracy go by "
                "TEST accuracy, so the best epoch's test figure is optimistic")
