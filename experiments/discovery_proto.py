"""Prototype: discovery whose widths follow the data (issue 15).

Procedure "path" (default):
  1. sparse init (density d), Bregman (AdaBreg / LinBreg) with GroupL2(lam) on neurons;
  2. grow phase: `grow` epochs at lam;
  3. shrink (continuation) phase: every epoch lam <- lam * gamma (units die weakest
     first through the prox), `shrink` epochs;
  4. a snapshot after every epoch: alive widths, val loss/acc of the iterate, and
     (refit > 0) val acc of the extracted compact model after `refit` epochs of Adam
     from the snapshot weights (debiasing);
  5. select the smallest snapshot (params) whose val score is within `tol` standard
     errors of the best (SE = sqrt(p (1-p) / n_val));
  6. fine-tune the selected compact model `finetune` epochs with Adam (cosine), test.

Run with PYTHONPATH pointing at an archdisc checkout, one thread:
  PYTHONPATH=/tmp/proto python experiments/discovery_proto.py --teacher 8,4 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from archdisc import ArchNet, alive, extract, param_groups, sparse_init
from archdisc.data import load_data
from archdisc.optim import AdaBreg, LinBreg
from archdisc import build_space


def epoch_order(seed, epoch, n):
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2 ** 63)
    return torch.randperm(n, generator=g)


def run_epoch(net, opt, x, y, bs, order, on_step=None):
    net.train()
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        if on_step:
            on_step()


@torch.no_grad()
def score(net, ds):
    net.eval()
    x, y = ds.tensors
    out = net(x)
    return (100.0 * (out.argmax(-1) == y).float().mean().item(),
            F.cross_entropy(out, y).item())


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def adam_train(net, data, epochs, lr, seed, bs=128, cosine=True):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = data.train.tensors
    total = math.ceil(len(x) / bs) * epochs
    done = [0]

    def cos():
        done[0] += 1
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done[0] / total))
    for e in range(1, epochs + 1):
        run_epoch(net, opt, x, y, bs, epoch_order(seed, e, len(x)), cos if cosine else None)
    return net


def space(widths_hidden, in_dim, classes):
    return build_space("mlp", widths=[in_dim, *widths_hidden, classes], in_shape=[in_dim])


def dense(data, widths, epochs, lr, seed, bs=128):
    torch.manual_seed(seed)
    net = ArchNet(space(widths, data.in_shape[0], data.out_dim))
    t0 = time.perf_counter()
    adam_train(net, data, epochs, lr, seed, bs, cosine=False)
    t = time.perf_counter() - t0
    return {"widths": widths, "params": nparams(net), "test": score(net, data.test)[0],
            "val": score(net, data.val)[0], "seconds": t}


def discover(data, a):
    """Returns a dict with the path, the selection and the final model's numbers."""
    t_start = time.perf_counter()
    n_hidden = len(a.teacher) if a.depth is None else a.depth
    torch.manual_seed(a.seed)
    net = sparse_init(ArchNet(space([a.width] * n_hidden, data.in_shape[0], data.out_dim)),
                      density=a.density, mode="unit", seed=a.seed)
    groups = param_groups(net, lam=a.lam)
    if a.optimizer == "adabreg":
        opt = AdaBreg(groups, lr=a.lr, delta=a.delta)
    else:
        opt = LinBreg(groups, lr=a.lr, delta=a.delta, momentum=0.9)
    regs = [g for g in opt.param_groups if g.get("reg") is not None]
    x, y = data.train.tensors
    n_val = len(data.val.tensors[0])
    path, snaps = [], []
    t_train = t_refit = 0.0
    epochs = a.grow + a.shrink
    lam = a.lam
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        if e > a.grow:  # continuation: raise lam geometrically, prox the extra at once
            new = lam * a.gamma
            with torch.no_grad():
                for g in regs:
                    extra = type(g["reg"])(new - lam)
                    extra.prox_(g["params"], g.get("delta", 1.0))
                    g["reg"].lam = new
            lam = new
        run_epoch(net, opt, x, y, a.bs, epoch_order(a.seed, e, len(x)))
        t_train += time.perf_counter() - t0
        w = list(alive(net)["units"].values())
        acc, loss = score(net, data.val)
        rec = {"epoch": e, "lam": lam, "widths": w, "val_acc": acc, "val_loss": loss}
        if min(w) > 0:
            _, compact = extract(net, verify=False)
            rec["params"] = nparams(compact)
            if a.refit and (e % a.every == 0 or e == epochs):
                t0 = time.perf_counter()
                c = adam_train(copy.deepcopy(compact), data, a.refit, a.ft_lr, a.seed + 7)
                rec["refit_val"], rec["refit_loss"] = score(c, data.val)
                t_refit += time.perf_counter() - t0
            snaps.append((rec, compact))
        path.append(rec)
        if a.verbose:
            print(json.dumps(rec))
    # ---- selection
    t_prune = 0.0
    if a.method in ("prune", "greedy"):
        fn = prune_path if a.method == "prune" else (lambda n, d, a_, t: greedy_path(n, d, a_))
        ppath, snaps, t_prune = fn(net, data, a, t_start)
        path = path + [dict(r, phase="prune") for r in ppath]
    key = "refit_val" if (a.refit or a.method != "path") else "val_acc"
    cands = [(r, c) for r, c in snaps if key in r]
    best = max(r[key] for r, _ in cands)
    se = math.sqrt(max(best * (100 - best), 1.0) / n_val)
    ok = [(r, c) for r, c in cands if r[key] >= best - a.tol * se]
    sel, compact = min(ok, key=lambda rc: (rc[0]["params"], -rc[0][key]))
    t0 = time.perf_counter()
    confirm = []
    if a.confirm:
        # reference: the best snapshot after the full fine-tune; then candidates from the
        # smallest up (pre-filtered: path val >= best - prefilter SE), each fine-tuned the
        # same way; the first within confirm_tol SE of the reference is the result
        ref_r, ref_c = max(cands, key=lambda rc: rc[0][key])
        ref = adam_train(copy.deepcopy(ref_c), data, a.finetune, a.ft_lr, a.seed + 1)
        ref_val = score(ref, data.val)[0]
        confirm.append({"widths": ref_r["widths"], "val": ref_val, "ref": True})
        se_ref = math.sqrt(max(ref_val * (100 - ref_val), 1.0) / n_val)
        pool = sorted([rc for rc in cands if rc[0][key] >= best - a.prefilter * se
                       and rc[0]["params"] < ref_r["params"]], key=lambda rc: rc[0]["params"])
        sel, final = ref_r, ref
        if a.bisect:  # smallest passing candidate, assuming pass/fail is monotone in size
            lo, hi = 0, len(pool)  # pool[hi] (or the reference) passes
            while lo < hi and len(confirm) <= a.confirm:
                mid = (lo + hi) // 2
                r_, c_ = pool[mid]
                m = adam_train(copy.deepcopy(c_), data, a.finetune, a.ft_lr, a.seed + 1)
                v = score(m, data.val)[0]
                confirm.append({"widths": r_["widths"], "val": v})
                if v >= ref_val - a.confirm_tol * se_ref:
                    hi, sel, final, compact = mid, r_, m, c_
                else:
                    lo = mid + 1
        else:
          for r_, c_ in pool[:a.confirm]:
            m = adam_train(copy.deepcopy(c_), data, a.finetune, a.ft_lr, a.seed + 1)
            v = score(m, data.val)[0]
            confirm.append({"widths": r_["widths"], "val": v})
            if v >= ref_val - a.confirm_tol * se_ref:
                sel, final, compact = r_, m, c_
                break
    else:
        final = adam_train(copy.deepcopy(compact), data, a.finetune, a.ft_lr, a.seed + 1)
    t_ft = time.perf_counter() - t0
    test, _ = score(final, data.test)
    return {"selected": sel, "confirm": confirm, "best_val": best, "se": se, "widths": sel["widths"],
            "params": sel["params"], "test": test, "val": score(final, data.val)[0],
            "test_before_ft": score(compact, data.test)[0],
            "seconds": {"train": t_train, "refit": t_refit, "prune": t_prune, "finetune": t_ft,
                        "total": time.perf_counter() - t_start},
            "path": path}


def unit_layers(net):
    """[(weight, bias, next_weight)] per searchable hidden linear layer, in order."""
    names = [n for n, m in net.layers.items() if isinstance(m, torch.nn.Linear)]
    return [(net.layers[a].weight, net.layers[a].bias, net.layers[b].weight)
            for a, b in zip(names[:-1], names[1:])]


@torch.no_grad()
def apply_masks(net, masks):
    for (w, b, _), m in zip(unit_layers(net), masks):
        w.mul_(m[:, None])
        b.mul_(m)


@torch.no_grad()
def hidden_acts(net, x):
    net.eval()
    out, h = [], x
    for w, b, _ in unit_layers(net):
        h = torch.relu(h @ w.t() + b)
        out.append(h)
    return out


def prune_path(net, data, a, t_start):
    """Iterative global unit pruning with Adam retraining between stages; a snapshot
    (val acc) after every stage; selection as in discover()."""
    x, y = data.train.tensors
    n_val = len(data.val.tensors[0])
    with torch.no_grad():
        masks = [(w.ne(0).any(1) | b.ne(0)).float() for w, b, _ in unit_layers(net)]
    apply_masks(net, masks)
    path, snaps = [], []
    opt = torch.optim.Adam(net.parameters(), lr=a.prune_lr)
    stage, e = 0, 0
    t_stage = time.perf_counter()
    while True:
        for _ in range(a.stage_epochs if stage else a.first_epochs):
            e += 1
            run_epoch(net, opt, x, y, a.bs, epoch_order(a.seed + 3, e, len(x)),
                      lambda: apply_masks(net, masks))
        acc, loss = score(net, data.val)
        w = [int(m.sum()) for m in masks]
        _, compact = extract(net, verify=False)
        rec = {"stage": stage, "epoch": e, "widths": w, "params": nparams(compact),
               "refit_val": acc, "val_loss": loss}
        if a.verbose:
            print(json.dumps(rec), flush=True)
        path.append(rec)
        snaps.append((rec, compact))
        best = max(r["refit_val"] for r in path)
        se = math.sqrt(max(best * (100 - best), 1.0) / n_val)
        if min(w) <= 1 or acc < best - a.stop_se * se:
            break
        # score units: ||in row, bias|| * ||out column||, remove the weakest q globally
        with torch.no_grad():
            scores = []
            acts = hidden_acts(net, x[:1024]) if a.score == "act" else None
            for li, ((wt, b, nxt), m) in enumerate(zip(unit_layers(net), masks)):
                if a.score == "act":  # relative contribution to the next pre-activation
                    h = acts[li]
                    z = h @ nxt.t()
                    s_ = h.pow(2).mean(0).sqrt() * nxt.norm(dim=0) / z.pow(2).mean().sqrt()
                else:
                    s_ = torch.sqrt(wt.pow(2).sum(1) + b.pow(2)) * nxt.norm(dim=0)
                if a.score_norm:
                    s_ = s_ / s_[m.bool()].mean()
                for i in torch.nonzero(m).flatten().tolist():
                    scores.append((float(s_[i]), li, i))
            scores.sort()
            k = max(1, int(a.prune_frac * len(scores)))
            alive_n = [int(m.sum()) for m in masks]
            cap = [max(1, int(a.layer_cap * n)) for n in alive_n]
            removed = 0
            for s_, li, i in scores:
                if removed >= k:
                    break
                if alive_n[li] <= 1 or cap[li] <= 0:
                    continue
                cap[li] -= 1
                masks[li][i] = 0
                alive_n[li] -= 1
                removed += 1
        apply_masks(net, masks)
        # fresh Adam moments for the pruned net keep stale momentum from reviving units
        opt = torch.optim.Adam(net.parameters(), lr=a.prune_lr)
        stage += 1
    return path, snaps, time.perf_counter() - t_stage


def greedy_path(net, data, a):
    """Per stage, try shrinking each hidden layer by `prune_frac` of its alive units
    (weakest by relative contribution), retrain `stage_epochs` with Adam, and keep the
    candidate with the lowest val loss. Every candidate is a snapshot."""
    x, y = data.train.tensors
    n_val = len(data.val.tensors[0])
    with torch.no_grad():
        masks = [(w.ne(0).any(1) | b.ne(0)).float() for w, b, _ in unit_layers(net)]
    apply_masks(net, masks)
    t0 = time.perf_counter()

    def train(net, masks, epochs, e0):
        opt = torch.optim.Adam(net.parameters(), lr=a.prune_lr)
        for e in range(e0 + 1, e0 + epochs + 1):
            run_epoch(net, opt, x, y, a.bs, epoch_order(a.seed + 3, e, len(x)),
                      lambda: apply_masks(net, masks))

    def snap(net, masks, stage, e, layer):
        acc, loss = score(net, data.val)
        _, compact = extract(net, verify=False)
        r = {"stage": stage, "epoch": e, "layer": layer, "widths": [int(m.sum()) for m in masks],
             "params": nparams(compact), "refit_val": acc, "val_loss": loss}
        if a.verbose:
            print(json.dumps(r), flush=True)
        return r, compact

    train(net, masks, a.first_epochs, 0)
    e = a.first_epochs
    path, snaps = [], []
    r, c = snap(net, masks, 0, e, None)
    path.append(r); snaps.append((r, c))
    stage = 0
    while True:
        stage += 1
        acts = hidden_acts(net, x[:1024])
        cands = []
        for li, ((wt, b, nxt), m) in enumerate(zip(unit_layers(net), masks)):
            n = int(m.sum())
            if n <= 1:
                continue
            k = max(1, int(a.prune_frac * n))
            s_ = acts[li].pow(2).mean(0).sqrt() * nxt.norm(dim=0)
            s_[~m.bool()] = float("inf")
            drop = torch.argsort(s_)[:k]
            net2, masks2 = copy.deepcopy(net), [mm.clone() for mm in masks]
            masks2[li][drop] = 0
            apply_masks(net2, masks2)
            train(net2, masks2, a.stage_epochs, e + 100 * li)
            r, c = snap(net2, masks2, stage, e + a.stage_epochs, li)
            path.append(r); snaps.append((r, c))
            cands.append((r, net2, masks2))
        if not cands:
            break
        e += a.stage_epochs
        r, net, masks = min(cands, key=lambda t: t[0]["val_loss"])
        best = max(p_["refit_val"] for p_ in path)
        se = math.sqrt(max(best * (100 - best), 1.0) / n_val)
        if r["refit_val"] < best - a.stop_se * se:
            break
    return path, snaps, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", default="8,4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--optimizer", default="adabreg")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--delta", type=float, default=1.0)
    p.add_argument("--density", type=float, default=0.02)
    p.add_argument("--grow", type=int, default=40)
    p.add_argument("--shrink", type=int, default=40)
    p.add_argument("--gamma", type=float, default=1.1)
    p.add_argument("--refit", type=int, default=0)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--tol", type=float, default=1.0)
    p.add_argument("--finetune", type=int, default=30)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--dense", default="", help="'sweep' (1,2,4,8x teacher + supernet) or ''")
    p.add_argument("--dense-epochs", type=int, default=None)
    p.add_argument("--method", default="path", choices=["path", "prune", "greedy"])
    p.add_argument("--prune-lr", type=float, default=3e-3)
    p.add_argument("--first-epochs", type=int, default=10)
    p.add_argument("--stage-epochs", type=int, default=3)
    p.add_argument("--prune-frac", type=float, default=0.2)
    p.add_argument("--stop-se", type=float, default=5.0)
    p.add_argument("--score", default="act", choices=["act", "norm"])
    p.add_argument("--layer-cap", type=float, default=0.34)
    p.add_argument("--confirm", type=int, default=0)
    p.add_argument("--confirm-tol", type=float, default=1.0)
    p.add_argument("--bisect", type=int, default=0)
    p.add_argument("--prefilter", type=float, default=3.0)
    p.add_argument("--score-norm", type=int, default=0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--tag", default="")
    a = p.parse_args()
    torch.set_num_threads(1)
    a.teacher = [int(v) for v in a.teacher.split(",")]
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        a.seed = seed
        data = load_data("teacher", seed=seed, teacher_widths=a.teacher)
        r = {"seed": seed}
        if a.dense:
            de = a.dense_epochs or (a.grow + a.shrink)
            sweep = [[m * t for t in a.teacher] for m in (1, 2, 4, 8)] if a.dense == "sweep" else []
            r["dense"] = [dense(data, w, de, a.lr, seed) for w in sweep]
            r["supernet"] = dense(data, [a.width] * len(a.teacher), de, a.lr, seed)
        d = discover(data, a)
        r.update(d)
        ratio = d["seconds"]["total"] / r["supernet"]["seconds"] if "supernet" in r else None
        r["cost_ratio"] = ratio
        print(f"seed {seed}: widths {d['widths']} params {d['params']} test {d['test']:.1f} "
              f"(before ft {d['test_before_ft']:.1f}) sel epoch {d['selected']['epoch']} "
              f"best_val {d['best_val']:.1f} sel_val {d['selected'].get('refit_val', d['selected'].get('val_acc', 0)):.1f} "
              f"t {d['seconds']['total']:.1f}s" + (f" ratio {ratio:.2f}" if ratio else "")
              + ("  dense " + " ".join(f"{x['widths']}:{x['test']:.1f}" for x in r.get("dense", []))
                 + f" super:{r['supernet']['test']:.1f}" if "supernet" in r else ""), flush=True)
        results.append(r)
    ws = [r["widths"] for r in results]
    print("SUMMARY", a.tag, "teacher", a.teacher, "widths", ws,
          "test mean %.2f" % (sum(r["test"] for r in results) / len(results)),
          "params", [r["params"] for r in results])
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": {k: v for k, v in vars(a).items()},
                                   "results": results}, indent=1))


if __name__ == "__main__":
    main()
