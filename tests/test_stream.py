"""Datasets that are not in-memory tensors are streamed through a DataLoader and train
exactly like the same samples held as tensors."""
import pytest
import torch

from archdisc.recipe.loop import batches, epoch_order, train_epoch


class Samples(torch.utils.data.Dataset):
    """A map-style Dataset that builds each sample on access (nothing held as a batch)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(6, generator=g)
        return x, int(x[:3].sum() > 0)


def _materialise(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_epoch_equals_in_memory(workers):
    ds = Samples(203)
    x, y = _materialise(ds)
    nets, losses = [], []
    for source in ((x, y), (ds, None)):
        net = _net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        losses.append([train_epoch(net, opt, *source, "classification", 32,
                                   epoch_order(0, e, len(ds)), workers=workers)
                       for e in (1, 2)])
        nets.append(net)
    assert losses[0] == losses[1]
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def test_batches_of_a_dataset_and_of_tensors_agree():
    ds = Samples(50)
    x, y = _materialise(ds)
    got = list(batches(ds, 16, "cpu"))
    assert [len(b[0]) for b in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in got]), x)
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    whole = list(batches(torch.utils.data.TensorDataset(x, y), 16, "cpu"))
    assert [len(b[0]) for b in whole] == [16, 16, 16, 2]
