"""Issue 15, step 1 of the information-criterion test: would BIC / AIC pick the width?

Dense width sweeps on the planted teachers (trained from scratch as discovery.py's dense
sweep: Adam 3e-3 cosine, 40 epochs), recording per net: params k, the mean training
cross-entropy (eval mode, after training), the validation cross-entropy, validation and
test accuracy. Then per teacher and seed, the width each rule picks:

    BIC     = 2 n CE_train + k ln n          AIC     = 2 n CE_train + 2 k
    BIC_val = 2 n CE_val   + k ln n          AIC_val = 2 n CE_val   + 2 k
    1se     = smallest net within 1 standard error of the best validation accuracy
    min_val = lowest validation loss

(n = training samples) and whether the pick is 1-4x the teacher's widths in every layer
and within 1 point of the best test accuracy of the 1x/2x/4x/8x/supernet nets (target A's
reference). Widths below the teacher (0.25x, 0.5x) are candidates too, so that a rule that
over-shrinks shows it.

    python experiments/ic_sweep.py   # one thread; writes experiments/results/ic_sweep.json
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from common import fit, set_threads, write_results

from archdisc import build_space, compile_graph
from archdisc.data import load_data

MULTS = (0.25, 0.5, 1, 2, 4, 8, 16)
SUPER = 256


@torch.no_grad()
def scores(net, split):
    x, y = split.tensors
    out = net.eval()(x)
    ce = float(torch.nn.functional.cross_entropy(out, y))
    per = (out.argmax(-1) == y).double() * 100
    return ce, float(per.mean()), float(per.std() / math.sqrt(len(per)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", nargs="+", default=["8,4", "32,8", "16,16,4"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    set_threads(1)
    started, rows = time.perf_counter(), []
    for t in args.teachers:
        tw = [int(v) for v in t.split(",")]
        for seed in args.seeds:
            data = load_data("teacher", seed=seed, teacher_widths=tw)
            n = len(data.train)
            nets = []
            cands = [(m, [max(1, int(m * w)) for w in tw]) for m in MULTS]
            cands = [(m, w) for m, w in cands if max(w) <= SUPER] + [("supernet", [SUPER] * len(tw))]
            for m, widths in cands:
                torch.manual_seed(seed)
                net = compile_graph(build_space("mlp", widths=[20, *widths, 4], in_shape=None))
                fit(net, data, args.epochs, seed, lr=3e-3, schedule="cosine")
                k = sum(p.numel() for p in net.parameters())
                tr_ce, tr_acc, _ = scores(net, data.train)
                va_ce, va_acc, va_se = scores(net, data.val)
                _, te_acc, _ = scores(net, data.test)
                nets.append({"mult": m, "widths": widths, "params": k, "train_ce": tr_ce,
                             "train_acc": tr_acc, "val_ce": va_ce, "val_acc": va_acc,
                             "val_se": va_se, "test": te_acc,
                             "bic": 2 * n * tr_ce + k * math.log(n), "aic": 2 * n * tr_ce + 2 * k,
                             "bic_val": 2 * n * va_ce + k * math.log(n),
                             "aic_val": 2 * n * va_ce + 2 * k})
            ref = max(r["test"] for r in nets if r["mult"] in (1, 2, 4, 8, "supernet"))
            top = max(nets, key=lambda r: r["val_acc"])
            ok = [r for r in nets if r["val_acc"] >= top["val_acc"] - top["val_se"]]
            picks = {c: min(nets, key=lambda r: r[c]) for c in ("bic", "aic", "bic_val", "aic_val")}
            picks["1se"] = min(ok, key=lambda r: r["params"])
            picks["min_val"] = min(nets, key=lambda r: r["val_ce"])
            row = {"teacher": t, "seed": seed, "n_train": n, "nets": nets, "best_dense": ref,
                   "picks": {c: {"mult": r["mult"], "widths": r["widths"], "test": r["test"],
                                 "within_1_4x": all(1 <= w / tt <= 4 for w, tt in zip(r["widths"], tw)),
                                 "within_1pt": r["test"] >= ref - 1}
                             for c, r in picks.items()}}
            rows.append(row)
            print(f"\nteacher {t} seed {seed}: best dense test {ref:.1f}")
            print("mult     widths        params  trCE    vaCE    va    te     BIC      AIC")
            for r in nets:
                print(f"{str(r['mult']):8} {'-'.join(map(str, r['widths'])):12} {r['params']:7d} "
                      f"{r['train_ce']:.4f}  {r['val_ce']:.4f}  {r['val_acc']:.1f}  {r['test']:.1f}  "
                      f"{r['bic']:8.0f} {r['aic']:8.0f}")
            print("picks:", {c: (p["mult"], p["test"], p["within_1_4x"], p["within_1pt"])
                             for c, p in row["picks"].items()}, flush=True)
    summary = {}
    for c in ("bic", "aic", "bic_val", "aic_val", "1se", "min_val"):
        summary[c] = {"within_1_4x": sum(r["picks"][c]["within_1_4x"] for r in rows),
                      "within_1pt": sum(r["picks"][c]["within_1pt"] for r in rows),
                      "both": sum(r["picks"][c]["within_1_4x"] and r["picks"][c]["within_1pt"]
                                  for r in rows),
                      "runs": len(rows), "mults": [r["picks"][c]["mult"] for r in rows]}
        print(c, summary[c])
    name = "ic_sweep" + (f"_{args.tag}" if args.tag else "")
    write_results(name, {"rows": rows, "summary": summary, "args": vars(args)},
                  seeds=args.seeds, started=started)


if __name__ == "__main__":
    main()
