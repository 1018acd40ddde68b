"""Issue 15, offline: does the score mass of a searched supernet's units show the teacher's
widths? Per hidden layer of the extracted model (20 search epochs, select none): its width,
the units holding 90% of the score sum, 90% of the squared scores, and the participation
ratio (sum s)^2 / sum s^2. Score: RMS activation x outgoing weight norm (select.py's).

    python experiments/discovery_mass.py       # one thread, ~1 min
"""
import tempfile

import torch

from common import set_threads

from archdisc import Config, load, run_discover
from archdisc.data import load_data
from archdisc.loop import batches
from archdisc.select import _outgoing_norm


def counts(scores):
    s = scores.sort(descending=True).values
    mass, sq = s.cumsum(0) / s.sum(), (s ** 2).cumsum(0) / (s ** 2).sum()
    return (len(s), int((mass < 0.9).sum()) + 1, int((sq < 0.9).sum()) + 1,
            round(float(s.sum() ** 2 / (s ** 2).sum()), 1))


@torch.no_grad()
def main():
    set_threads(1)
    for tw in ([8, 4], [32, 8], [16, 16, 4]):
        for seed in (0, 1):
            config = Config(space="mlp", space_options={"widths": [20, *[256] * len(tw), 4]},
                            data="teacher", data_options={"teacher_widths": tw}, seed=seed,
                            epochs=20, finetune=0, device="cpu", select="none")
            with tempfile.TemporaryDirectory() as d:
                with torch.enable_grad():
                    run_discover(config, d, progress=False)
                net = load(f"{d}/compact").eval()
            data = load_data("teacher", seed=seed, teacher_widths=tw)
            env = net.activations(next(batches(data.train, 1024, torch.device("cpu")))[0])
            rows = []
            for i in range(1, len(tw) + 1):
                a = env[f"act{i}"]
                rows.append(counts(a.pow(2).mean(0).sqrt()
                                   * _outgoing_norm(net, f"act{i}", a.shape[1])))
            print(tw, seed, rows, flush=True)


if __name__ == "__main__":
    main()
