"""Optimisers by name and learning-rate schedules as pure functions of the step (nanoGPT's get_lr)."""
from __future__ import annotations

import math

import torch

from digitlab.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | LeanAdamW:
    """The optimiser the config names, with its lr, momentum and weight decay."""
    params = model.parameters()
    if cfg.optimizer == "adamw-lean":
        return LeanAdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # validate() makes this unreachable


class LeanAdamW:
    """AdamW (Loshchilov & Hutter 2019) computed as torch.optim.AdamW computes it (amsgrad off), without torch.optim.

    Why: building any torch.optim optimiser imports torch._dynamo (its methods are wrapped to keep the compiler
    out), about 1.1 s of CPU, as long as importing torch itself and a fifth of a `fast` run; nothing else a
    training run does imports it. This is the part of torch.optim a run uses: param_groups (their "lr" is what
    set_lr changes), step(), zero_grad(), and state_dict()/load_state_dict() in torch.optim.AdamW's layout, so
    either optimiser resumes from the other's checkpoint. Parameters without a gradient (frozen) are skipped."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                         "amsgrad": False, "maximize": False}
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups: list[dict] = [{**self.defaults, "params": params}]
        self.state: dict[torch.Tensor, dict] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p not in self.state:
                    self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            self.update(group, params)

    def update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One AdamW step of `params`, all of which have a state: torch's foreach AdamW, op for op."""
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_([s["step"] for s in states], 1)
        if decay:
            torch._foreach_mul_(params, 1 - lr * decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        for p, s in zip(params, states):  # bias corrections differ per parameter only after a partial resume
            step = s["step"].item()
            denom = (s["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
            p.addcdiv_(s["exp_avg"], denom, value=-lr / (1 - beta1 ** step))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        """torch.optim's layout: per-parameter state keyed by the parameter's index across the groups."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Load what state_dict() (or torch.optim.AdamW's) wrote for the same parameters; a mismatch is a
        ValueError and leaves this optimiser as it was."""
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        by_index = {i: p for g, mine in zip(groups, self.param_groups) for i, p in zip(g["params"], mine["params"])}
        state = {}
        for i, s in saved["state"].items():
            p = by_index[int(i)]
            state[p] = {k: (v.to(p.device, p.dtype) if isinstance(v, torch.Tensor) and v.dim() else v)
                        for k, v in s.items()}
            state[p]["step"] = torch.as_tensor(s["step"], dtype=torch.float32).clone()
        for g, mine in zip(groups, self.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})
        self.state = state


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step `step` (0-based) of the whole run."""
    total = max(1, round((cfg.schedule_epochs or cfg.epochs) * steps_per_epoch))  # steps after it keep its end lr
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    progress = min(step / total, 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: linear warm-up from lr/25 to lr, then linear decay to ~0 (airbench-style triangle)
    if progress < cfg.warmup:
        return cfg.lr * (0.04 + 0.96 * progress / cfg.warmup)
    return cfg.lr * max(0.0, (1 - progress) / (1 - cfg.warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
