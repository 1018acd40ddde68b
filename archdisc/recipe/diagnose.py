"""What a finished discover run should tell its user: the size and metric after each
stage, a warning (with its likely cause and the fix) when the search did not work, and the
numbers each epoch records."""
from __future__ import annotations

import torch

NEARLY_ALL = 0.95  # the search switched on at least this fraction of the searchable units
NEAR_CHANCE = 1.5  # a val accuracy under this many times chance (and under a quarter of the
#                   way from chance to 100%) counts as not trained


def stage(name: str, params: int, val=None, test=None) -> dict:
    """One row of the stage table of report.json / report.md."""
    return {"stage": name, "params": params, "val": val, "test": test}


def with_removed(stages: list[dict]) -> list[dict]:
    """The stage rows with the parameters each stage removed (negative: added)."""
    return [{**s, "removed": None if i == 0 else stages[i - 1]["params"] - s["params"]}
            for i, s in enumerate(stages)]


def warnings(alive0: dict, history: list[dict], widths: dict, config, metric: str,
             val_supernet: float, classes: int) -> list[str]:
    """One line per problem: a search that changed no unit (``history``: the alive units
    after each epoch), one that switched on nearly every unit, a supernet that ended near
    chance."""
    out, epochs = [], len(history)
    alive_end = history[-1] if history else alive0
    total = sum(widths.get(n, 0) for n in alive_end)
    if alive0 and all(a == alive0 for a in history) and sum(alive0.values()) < total:
        out.append(f"the search changed no unit in {epochs} epochs (alive units stayed at the "
                   f"sparse start): with lam {config.lam:g} and lr {config.lr:g} AdaBreg switches "
                   f"a unit on after about lam / lr steps of a steady gradient, (lam / lr)^2 of "
                   f"a noisy one (RESULTS.md 15: resnet18's dead channels get noise, and a "
                   f"channel behind BatchNorm never leaves: its gradient is orthogonal to its "
                   f"weights); for a "
                   f"smaller model state a budget (--target-params, --target-macs: every unit "
                   f"trains, then the weakest are cut); to let units in, lower --lam or raise "
                   f"--lr")
    elif total and sum(alive_end.values()) >= NEARLY_ALL * total > sum(alive0.values()):
        out.append(f"the search switched on {100 * sum(alive_end.values()) / total:.0f}% of "
                   f"the searchable units: lam {config.lam:g} is too small for lr "
                   f"{config.lr:g}; raise --lam, lower --lr, or state a budget "
                   f"(--target-params)")
    chance = 100 / max(1, classes)
    if metric == "accuracy" and classes > 1 and \
            val_supernet < min(NEAR_CHANCE * chance, chance + (100 - chance) / 4):
        out.append(f"the supernet ended near chance (val accuracy {val_supernet:.1f}%, chance "
                   f"{chance:.1f}%): it did not learn; search longer (--epochs) or "
                   f"change --lr (now {config.lr:g})")
    return out


def over_budget(report: dict) -> list[str]:
    """A line when the compact model is over the target the run was given (widths tied by
    residual sums, or per-layer limits, can keep the cut from reaching it)."""
    for m in ("params", "macs"):
        target, got = report.get(f"target_{m}"), report[m]["compact"]
        if target and got > target:
            return [f"the compact model has {got:,} {m}, {got / target:.2f}x the target "
                    f"{target:,}: the cut could not reach it (units tied across layers, e.g. "
                    f"by residual sums, die only together); ask for a larger target"]
    ms, got = report.get("target_latency_ms"), report.get("latency_ms_searched")
    if ms and got and got > ms:
        return [f"the compact model ran in {got:.3g} ms, over the target {ms:g} ms, after "
                f"the search's last tries; ask for a larger target"]
    return []


@torch.no_grad()
def fingerprint(net, alive_now: dict, opt) -> list[float]:
    """Numbers that differ between ranks whose parameters, alive units or lam differ."""
    lams = [g["reg"].lam for g in opt.param_groups if g.get("reg") is not None]
    return ([float(sum(p.double().abs().sum() for p in net.parameters()))]
            + [float(v) for v in alive_now["units"].values()] + lams)


@torch.no_grad()
def density(net) -> float:
    nz = sum(int(p.count_nonzero()) for p in net.parameters())
    return nz / max(1, sum(p.numel() for p in net.parameters()))


def current_lam(opt) -> float | None:
    for g in opt.param_groups:
        if g.get("reg") is not None:
            return g["reg"].lam
    return None
