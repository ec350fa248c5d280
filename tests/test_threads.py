"""The CPU thread count a training run picks when its config leaves `threads` at 0 (device.training_threads): from
the CPUs the rest of the machine leaves idle, never above torch's own count, and never over a count the user or a
sweep gave. Nothing here is timed: the idle CPUs come from a fake /proc/stat."""
from __future__ import annotations

import io

import pytest
import torch

from digitlab import device

pytestmark = pytest.mark.quick  # every test here is in the quick subset

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """torch.set_num_threads is process-wide: every test here leaves it as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def fake_proc_stat(monkeypatch, *snapshots: dict[str, tuple[int, int]], affinity=(0, 1)) -> list[float]:
    """Make device.free_cpus read `snapshots` from /proc/stat, one per read, each {cpu: (busy, idle) ticks},
    on a process allowed to run on CPUs `affinity`; returns the list the sleeps it asks for are appended to."""
    reads = iter(snapshots)

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/stat"
        lines = ["cpu  999 0 999 999 0 0 0 0 0 0"]  # the all-CPU line, never counted
        for name, (busy, idle) in next(reads).items():
            # user nice system idle iowait irq softirq steal guest guest_nice: busy split over user and system, idle
            # over idle and iowait (both idle); guest time is already in user's, so its large figure must not count
            user, system, iowait = busy // 2, busy - busy // 2, idle // 2
            lines.append(f"{name} {user} 0 {system} {idle - iowait} {iowait} 0 0 0 {7 * idle + 3} 0")
        lines.append("intr 12345 0 0")
        return io.StringIO("\n".join(lines) + "\n")

    slept: list[float] = []
    monkeypatch.setattr(device, "open", fake_open, raising=False)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(affinity))
    monkeypatch.setattr(device.time, "sleep", slept.append)
    return slept


def test_free_cpus_counts_the_idle_share_of_each_cpu_over_the_window(monkeypatch):
    slept = fake_proc_stat(monkeypatch, {"cpu0": (100, 100), "cpu1": (100, 100)},  # cpu0 idle, cpu1 busy
                           {"cpu0": (100, 110), "cpu1": (110, 100)})
    assert device.free_cpus() == pytest.approx(1.0)
    assert slept == [device.FREE_WINDOW_S]


def test_free_cpus_of_an_idle_machine_and_of_a_half_busy_one(monkeypatch):
    fake_proc_stat(monkeypatch, {"cpu0": (0, 0), "cpu1": (0, 0)}, {"cpu0": (0, 5), "cpu1": (0, 5)})
    assert device.free_cpus() == pytest.approx(2.0)
    fake_proc_stat(monkeypatch, {"cpu0": (0, 0), "cpu1": (0, 0)}, {"cpu0": (5, 5), "cpu1": (0, 10)})
    assert device.free_cpus() == pytest.approx(1.5)


def test_free_cpus_counts_only_the_cpus_this_process_may_use(monkeypatch):
    """A container or `taskset` limited to cpu1 sees its own CPU, not the idle ones it cannot run on."""
    snapshots = ({"cpu0": (0, 0), "cpu1": (0, 0), "cpu2": (0, 0)},
                 {"cpu0": (0, 10), "cpu1": (10, 0), "cpu2": (0, 10)})
    fake_proc_stat(monkeypatch, *snapshots, affinity=(1,))
    assert device.free_cpus() == pytest.approx(0.0)
    fake_proc_stat(monkeypatch, *snapshots, affinity=(0, 1, 2))
    assert device.free_cpus() == pytest.approx(2.0)


def test_free_cpus_is_none_without_proc_stat(monkeypatch):
    def missing(path, *args, **kwargs):
        raise FileNotFoundError(path)

    monkeypatch.setattr(device, "open", missing, raising=False)
    assert device.free_cpus() is None


@pytest.mark.parametrize("free, most, expected", [
    (2.0, 2, 2),    # idle 2-core machine: torch's own count
    (1.0, 2, 1),    # another job holds one of 2 cores
    (1.4, 2, 1),    # a core busy more than half the time counts as taken
    (1.6, 2, 2),
    (0.0, 2, 1),    # everything busy: still one thread
    (15.8, 8, 8),   # never more than torch's count (OMP_NUM_THREADS, physical cores)
    (5.1, 8, 5),
    (None, 4, 4),   # nothing known (no /proc/stat): torch's count
])
def test_pick_threads(free, most, expected):
    assert device.pick_threads(free, most) == expected


def test_pick_threads_defaults_to_torchs_own_count():
    assert device.pick_threads(None) == device.TORCH_THREADS
    assert device.pick_threads(1000.0) == device.TORCH_THREADS


def test_explicit_threads_are_used_as_given_and_nothing_is_measured(monkeypatch):
    """The user's --threads and a sweep's share of the cores win, even above torch's count or on a busy machine."""
    def measured(*args):
        raise AssertionError("free_cpus() called although the config gives threads")

    monkeypatch.setattr(device, "free_cpus", measured)
    assert device.training_threads(1, CPU) == 1
    assert device.training_threads(device.TORCH_THREADS + 3, CPU) == device.TORCH_THREADS + 3
    assert device.training_threads(2, CPU, ranks=4) == 2


def test_threads_0_on_the_cpu_picks_from_the_free_cpus(monkeypatch):
    monkeypatch.setattr(device, "TORCH_THREADS", 4)
    monkeypatch.setattr(device, "free_cpus", lambda: 1.0)
    assert device.training_threads(0, CPU) == 1
    monkeypatch.setattr(device, "free_cpus", lambda: 3.9)
    assert device.training_threads(0, CPU) == 4
    monkeypatch.setattr(device, "free_cpus", lambda: None)
    assert device.training_threads(0, CPU) == 4


def test_threads_0_elsewhere_keeps_what_0_meant_before(monkeypatch):
    """A GPU run keeps torch's current count; local DDP ranks on the CPU share it, without measuring (they start
    together, and each would count the others' start-up as load)."""
    monkeypatch.setattr(device, "free_cpus", lambda: 0.0)
    torch.set_num_threads(4)
    assert device.training_threads(0, torch.device("cuda")) == 4
    assert device.training_threads(0, torch.device("cuda"), ranks=2) == 4
    assert device.training_threads(0, CPU, ranks=2) == 2
    assert device.training_threads(0, CPU, ranks=8) == 1


def test_training_setup_sets_the_picked_count(monkeypatch):
    """training.set_threads applies training_threads(): 1 thread on a machine with one CPU free, 3 when asked."""
    import digitlab.training as train_module
    from digitlab.config import make_config
    from digitlab.distributed import DistContext

    monkeypatch.setattr(device, "TORCH_THREADS", 4)
    monkeypatch.setattr(device, "free_cpus", lambda: 1.0)
    torch.set_num_threads(2)
    train_module.set_threads(make_config({"threads": 0}), DistContext(), CPU)
    assert torch.get_num_threads() == 1
    train_module.set_threads(make_config({"threads": 3}), DistContext(), CPU)
    assert torch.get_num_threads() == 3
