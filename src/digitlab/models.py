"""The model zoo: every model takes (B, 1, 28, 28) float images and returns (B, 10) logits.

Models are registered by name with @register_model and built with create_model(name, **kwargs);
a run folder stores that name and those kwargs, so a checkpoint is rebuilt through this registry and
never by unpickling code. Softmax lives in one place, the predictor: models return logits.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# The largest model a config may ask for: 4 GB of fp32 weights, far beyond anything that learns 28x28 digits,
# and small enough that a config.json asking for more is refused before anything is allocated.
MAX_PARAMETERS = 1_000_000_000


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a model builder to the registry under its function name. A taken name is refused: run folders name
    their model, and a second builder under that name would silently rebuild other runs' checkpoints."""
    if fn.__name__ in _MODELS:
        raise ConfigError(f"a model named {fn.__name__!r} is already registered; choose another name")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model."""
    return sorted(_MODELS)


def model_defaults(name: str) -> dict:
    """The options a model builder accepts, with their default values."""
    builder = get_builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()}


def get_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names or options are a ConfigError, not a TypeError."""
    builder = get_builder(name)
    unknown = set(kwargs) - set(model_defaults(name))
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(sorted(unknown))}; "
                          f"it takes: {', '.join(model_defaults(name)) or 'none'}")
    return builder(**kwargs)


def check_model_args(name: str, args: dict) -> nn.Module:
    """Build the model on the meta device (shapes only, no memory) to check its options, and refuse one of more
    than MAX_PARAMETERS parameters; returns that shape-only model. Every problem is a one-line ConfigError."""
    if not isinstance(args, dict):
        raise ConfigError(f"model_args must be a dict of options, got {type(args).__name__}")
    try:
        with torch.device("meta"):
            probe = create_model(name, **args)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model {name!r} cannot be built with {args} ({detail})") from None
    count = count_parameters(probe)
    if count > MAX_PARAMETERS:
        raise ConfigError(f"model {name!r} with {args} would have {count:,} parameters, more than digitlab's "
                          f"limit of {MAX_PARAMETERS:,}")
    return probe


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def positive_int(model: str, key: str, value) -> int:
    """A builder option that must be a whole number above zero (JSON gives 1e3 as a float: refused too)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model}: {key} must be a whole number of at least 1, got {value!r}")
    return value


def probability(model: str, key: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"{model}: {key} must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def choice(model: str, key: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{model}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Fully connected


class MLP(nn.Module):
    """784-300-100-10 with BatchNorm after each hidden Linear (Ioffe & Szegedy 2015)."""

    def __init__(self, hidden: tuple[int, ...] = (300, 100)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_model
def mlp(hidden: tuple[int, ...] = (300, 100)) -> nn.Module:
    """Multilayer perceptron 784-300-100-10 with BatchNorm1d and ReLU (LeCun et al. 1998's sizes)."""
    if not isinstance(hidden, (list, tuple)):
        raise ConfigError(f"mlp: hidden must be a list of layer widths, e.g. [300, 100], got {hidden!r}")
    return MLP(tuple(positive_int("mlp", "each hidden width", h) for h in hidden))


# ---------------------------------------------------------------------------------------------
# Convolutional


class LeNet5(nn.Module):
    """LeNet-5 as in LeCun et al. 1998 / d2l.ai: sigmoid units and average pooling."""

    def __init__(self, activation: str = "sigmoid", pool: str = "avg"):
        super().__init__()
        acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}
        pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
        act = acts[choice("lenet5", "activation", activation, acts)]
        pool_cls = pools[choice("lenet5", "pool", pool, pools)]
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), pool_cls(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5), act(), pool_cls(2),  # (B, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10),
        )
        for m in self.modules():  # Xavier-uniform init, as the recipe prescribes
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def lenet5(activation: str = "sigmoid", pool: str = "avg") -> nn.Module:
    """LeNet-5 (LeCun et al. 1998), sigmoid + average pooling, Xavier init; relu/max as options."""
    return LeNet5(activation, pool)


class CNN(nn.Module):
    """Two conv blocks (conv, maxpool, ReLU, BatchNorm) and a dropout MLP head 500-60-20-10."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(10),  # (B,10,13,13)
            nn.Conv2d(10, 20, 5, stride=1, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.BatchNorm2d(20),  # (B,20,5,5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(500, 60), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(60, 20), nn.Dropout(dropout), nn.ReLU(),
            nn.Linear(20, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def cnn(dropout: float = 0.5) -> nn.Module:
    """Small CNN with BatchNorm and dropout, the common 'MNIST CNN with BN' tutorial network."""
    return CNN(probability("cnn", "dropout", dropout))


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) with its first layers adapted to 28x28 inputs."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=1),  # (B, 64, 26, 26)
            nn.Conv2d(64, 192, 3, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),  # (B, 256, 6, 6)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(9216, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def alexnet(dropout: float = 0.5) -> nn.Module:
    """AlexNet (Krizhevsky et al. 2012) adapted to 28x28: 5 conv layers, 9216-4096-4096-10 head."""
    return AlexNet(probability("alexnet", "dropout", dropout))


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm has one), BatchNorm, ReLU; with pool=True the 2x2 max pool comes right after
    the conv (airbench's order), so BatchNorm and ReLU run on a quarter of the pixels."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    if pool:
        return nn.Sequential(conv, nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU())
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


class DigitNet(nn.Module):
    """digitlab's own network for the `best` and `fast` recipes: a VGG-style stack of 3x3 conv-BN-ReLU
    blocks, max pooling after each stage, then the 3x3 map flattened into one Linear (measured: 98.4%
    vs 97.6% for global max pooling after one epoch at width 8). It runs channels_last on every device
    (training and prediction apply it through device.use_channels_last): about 1.5x faster on CPU (oneDNN).

    pool_first=True pools each stage's last conv before its BatchNorm and ReLU (conv-pool-BN-ReLU, as airbench
    does): the same layers and parameters, a quarter of the BatchNorm/ReLU work, which is half of a step of the
    small `fast` net on a CPU (measured: ~25% less CPU per training image at width 16 depth 1, docs/results.md).
    Max pooling commutes with ReLU, and with BatchNorm wherever its scale is positive, so the change is small.
    whiten=True makes the first conv a fixed whitening of 3x3 patches (airbench's data-dependent first layer): its
    filters are set once from training images by init_from_data() and never trained, so no gradient flows through
    the 28x28 layer."""

    channels_last_on_cpu = True

    def __init__(self, width: int = 32, depth: int = 2, pool_first: bool = False, whiten: bool = False,
                 stem: str = "conv"):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in (width, 2 * width, 4 * width):  # 28 -> 14 -> 7 -> 3
            if stem == "stride2" and c_in == 1:  # 4x4 stride 2: the 3x3 conv + 2x2 pool's field, a quarter the work
                blocks.append(nn.Sequential(nn.Conv2d(1, c_out, 4, stride=2, padding=1, bias=False),
                                            nn.BatchNorm2d(c_out), nn.ReLU()))
                c_in = c_out
                continue
            ins = [c_in] + [c_out] * (depth - 1)
            blocks += [conv_bn(c, c_out, pool=pool_first and i == depth - 1) for i, c in enumerate(ins)]
            if not pool_first:
                blocks.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 3 * 3, 10))
        self.whiten = whiten
        if whiten:
            self.first_conv.weight.requires_grad_(False)

    @property
    def first_conv(self) -> nn.Conv2d:
        return next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """With whiten=True: set the first conv's filters to the eigenvectors of the 3x3 patch covariance of
        `images` (normalised model input, (N, 1, 28, 28)), each scaled by 1/sqrt(eigenvalue) and paired with its
        negation (airbench): the largest width/2 components, so the layer passes whitened patches both signs."""
        if not self.whiten:
            return
        conv = self.first_conv
        patches = F.unfold(images.float(), 3, padding=1).transpose(1, 2).reshape(-1, 9)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        keep = (conv.out_channels + 1) // 2
        order = eigenvalues.argsort(descending=True)[:keep]
        filters = (eigenvectors[:, order] / (eigenvalues[order] + 1e-2).sqrt()).T  # (keep, 9)
        filters = torch.cat([filters, -filters])[:conv.out_channels]
        conv.weight.copy_(filters.reshape(conv.weight.shape).to(conv.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # features: (B, 4w, 3, 3)


@register_model
def digitnet(width: int = 32, depth: int = 2, pool_first: bool = False, whiten: bool = False,
             stem: str = "conv") -> nn.Module:
    """digitlab's fast VGG-style conv-BN net (3 stages of `depth` 3x3 convs, widths w, 2w, 4w, Linear head)."""
    for key, value in (("pool_first", pool_first), ("whiten", whiten)):
        if not isinstance(value, bool):
            raise ConfigError(f"digitnet: {key} must be true or false, got {value!r}")
    if whiten and stem != "conv":
        raise ConfigError("digitnet: whiten whitens 3x3 patches, so it needs stem 'conv', not a 4x4 stride-2 stem")
    return DigitNet(positive_int("digitnet", "width", width), positive_int("digitnet", "depth", depth),
                    pool_first, whiten, choice("digitnet", "stem", stem, ("conv", "stride2")))


# ---------------------------------------------------------------------------------------------
# Recurrent: the 28 image rows are 28 time steps of 28 features (pytorch/examples mnist_rnn)


class RowRNN(nn.Module):
    """Reads the image row by row with an RNN, LSTM or GRU; the last step's output feeds a Linear."""

    def __init__(self, cell: str, hidden_size: int, num_layers: int):
        super().__init__()
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_cls(input_size=28, hidden_size=hidden_size, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 28, 28)  # (B, T=28 rows, 28 features)
        out, _ = self.rnn(x)  # (B, T, H)
        return self.fc(out[:, -1])


@register_model
def rnn(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """Elman RNN (tanh) over image rows."""
    return RowRNN("rnn", positive_int("rnn", "hidden_size", hidden_size),
                  positive_int("rnn", "num_layers", num_layers))


@register_model
def lstm(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """LSTM (Hochreiter & Schmidhuber 1997) over image rows, as in pytorch/examples mnist_rnn."""
    return RowRNN("lstm", positive_int("lstm", "hidden_size", hidden_size),
                  positive_int("lstm", "num_layers", num_layers))


@register_model
def gru(hidden_size: int = 128, num_layers: int = 1) -> nn.Module:
    """GRU (Cho et al. 2014) over image rows."""
    return RowRNN("gru", positive_int("gru", "hidden_size", hidden_size),
                  positive_int("gru", "num_layers", num_layers))
