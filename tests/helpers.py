"""Small graphs shared by several test files."""
from archdisc import ArchGraph


def indexed_graph() -> ArchGraph:
    """A narrow member (b, 2 units, channel-gated) scattered into a 4-wide add."""
    g = ArchGraph(name="mine")
    x = g.input("x", [6])
    a = g.linear("a", x, 4)
    b = g.linear("b", x, 2)
    s = g.add_op("s", "add", [a, b], units=4, index={b: [3, 1]}, gates={b: "channel"})
    g.output("out", g.linear("head", g.act("r", s), 3, searchable=False))
    return g


def tiny_cnn(classes: int = 3, width: int = 8, channels: int = 1):
    """A small torch CNN (conv-bn-relu twice, pool, linear), for ``--model helpers:tiny_cnn``."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


def failing_model(**options):
    """A model callable that raises, for the bad-input corpus."""
    raise ValueError("this model cannot be built")


NOT_CALLABLE = 3


def untraceable():
    """A module with data-dependent control flow, which torch.fx cannot trace."""
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(x) if x.sum() > 0 else -self.fc(x)
    return Branchy()


def assert_same_accuracy(a: float, b: float, n: int) -> None:
    """Accuracies (%) on ``n`` samples of two float computations of one function (the
    supernet and its extracted compact model): equal, except that a sample whose two top
    logits lie within rounding (~1e-6) of each other may be decided the other way by the
    other computation on another CPU. So at most one sample may differ; a wrong
    extraction changes far more (and ``extract(verify=True)`` compares the outputs)."""
    assert abs(a - b) <= 100 / n + 1e-9, (a, b, n)


def small_mlp(classes: int = 4, features: int = 20, hidden: int = 32):
    """A torch MLP for teacher data, for ``--model helpers:small_mlp --weights FILE``."""
    from torch import nn
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, classes))


def assert_resume_is_bit_identical(config, folder, stop_at: int = 1) -> None:
    """run_discover stopped after epoch ``stop_at`` and resumed ends with the same supernet,
    bit for bit, as the uninterrupted run."""
    import pytest
    import torch
    from archdisc import run_discover
    from archdisc.io import load_tensors

    def stop(epoch, record, net):
        if epoch == stop_at:
            raise KeyboardInterrupt

    run_discover(config, folder / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_discover(config, folder / "cut", progress=False, on_epoch=stop)
    run_discover(config, folder / "cut", resume=True, progress=False)
    a, _ = load_tensors(folder / "full" / "supernet.safetensors")
    b, _ = load_tensors(folder / "cut" / "supernet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
