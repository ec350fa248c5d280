"""The canonical PyTorch MNIST example (pytorch/examples mnist/main.py), reimplemented faithfully.

    python benchmarks/reference_example.py --target-accuracy 0.99 --max-epochs 14

It is the yardstick for benchmarks/time_to_accuracy.py and benchmarks/data_path.py, so it keeps the
example's model, optimiser, schedule and, above all, its data path: a per-sample Dataset that turns
each uint8 image into a PIL image and then into a normalised tensor (torchvision's ToTensor +
Normalize((0.1307,), (0.3081,)), reimplemented here without torchvision), fed through a DataLoader.
The IDX files are read with gzip + numpy, as torchvision's MNIST does, not through digitlab.

Differences from the original, all in its favour or neutral: --threads (torch's default if 0); the
test set is evaluated after every epoch (as there) and the script stops at the first epoch that
reaches --target-accuracy.
shuffle=True is used on every device (the example passes it only with its CUDA kwargs), and
num_workers=1 + pin_memory only on CUDA, as the example does.
"""
from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.optim.lr_scheduler import StepLR

T_START = time.perf_counter()
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"


class Net(nn.Module):
    """pytorch/examples mnist Net: two 3x3 convs, max pool, dropout, 9216-128-10, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a numpy array shaped by its header."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def to_tensor_normalized(pic: Image.Image, mean: float = 0.1307, std: float = 0.3081) -> torch.Tensor:
    """torchvision's ToTensor() then Normalize((mean,), (std,)) for a mode 'L' PIL image."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()  # (1, H, W)
    img = img.to(torch.float32).div(255)
    return (img - mean) / std


class MNISTPerSample(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's __getitem__: uint8 array -> PIL image -> transform, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.data = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        return to_tensor_normalized(img), target


def load_split(split: str, data_dir: Path = DATA_DIR) -> MNISTPerSample:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    return MNISTPerSample(images, labels)


def loader_kwargs(batch_size: int, use_cuda: bool) -> dict:
    """The example's DataLoader arguments: workers and pinned memory on CUDA only."""
    kwargs = {"batch_size": batch_size, "shuffle": True}
    if use_cuda:
        kwargs.update({"num_workers": 1, "pin_memory": True})
    return kwargs


def train_epoch(model, device, loader, optimizer, epoch: int, log_interval: int = 10, max_steps: int = 0) -> None:
    """The example's train(): one pass, printing the loss every log_interval batches."""
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % log_interval == 0:
            print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(loader.dataset)}]\tLoss: {loss.item():.6f}")
        if max_steps and batch_idx + 1 >= max_steps:
            break


@torch.no_grad()
def test(model, device, loader) -> tuple[float, float]:
    """The example's test(): summed NLL and accuracy over the test set."""
    model.eval()
    test_loss, correct = 0.0, 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        output = model(data)
        test_loss += F.nll_loss(output, target, reduction="sum").item()
        correct += output.argmax(dim=1).eq(target).sum().item()
    n = len(loader.dataset)
    return test_loss / n, correct / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test-batch-size", type=int, default=1000)
    parser.add_argument("--max-epochs", type=int, default=14, help="the example's --epochs")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-accuracy", type=float, default=0.99, help="stop at the first epoch reaching it")
    parser.add_argument("--no-accel", action="store_true", help="train on the CPU even if CUDA is there")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="cut every epoch after this many batches (smoke tests only; 0: whole epochs)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = not args.no_accel and torch.cuda.is_available()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if use_cuda else "cpu")
    train_loader = torch.utils.data.DataLoader(load_split("train"), **loader_kwargs(args.batch_size, use_cuda))
    test_loader = torch.utils.data.DataLoader(load_split("test"), **loader_kwargs(args.test_batch_size, use_cuda))
    model = Net().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.max_epochs + 1):
        train_epoch(model, device, train_loader, optimizer, epoch, max_steps=args.max_steps)
        loss, acc = test(model, device, test_loader)
        scheduler.step()
        # time_to_accuracy.py reads this line; the elapsed time counts from this script's first line.
        print(f"Test set: epoch {epoch}, Average loss: {loss:.4f}, Accuracy: {acc:.4%}, "
              f"elapsed {time.perf_counter() - T_START:.1f}s", flush=True)
        if args.target_accuracy and acc >= args.target_accuracy:
            print(f"REACHED {args.target_accuracy:.4f} at epoch {epoch}", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
