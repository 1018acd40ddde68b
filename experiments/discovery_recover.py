"""Issue 15 diagnostic: teacher (argv 1, e.g. 8,4), seed (argv 2); the extracted model refit 500 steps (N0), then one layer cut to its top-scored units and refit 100 / 300 / 1000 steps (select refits: Adam 3e-3, cosine). Prints val accuracy. python experiments/discovery_recover.py 8,4 0"""
import sys, torch, copy, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from archdisc import Config, run_discover, load
from archdisc.data import load_data
from archdisc.select import _tools, _copy, _remove_weakest
torch.set_num_threads(1)
tw = [int(v) for v in sys.argv[1].split(",")]; seed = int(sys.argv[2])
cfg = Config(space="mlp", space_options={"widths": [20, *[256]*len(tw), 4]}, data="teacher",
             data_options={"teacher_widths": tw}, seed=seed, epochs=20, finetune=0,
             device="cpu", select="none")
run_discover(cfg, f"/tmp/discovery_recovery_{seed}", force=True, progress=False)
compact = load(f"/tmp/discovery_recovery_{seed}/compact")
data = load_data("teacher", seed=seed, teacher_widths=tw)
probe, refit, snapshot = _tools(data, cfg, "cpu")
n0 = refit(_copy(compact), 500)
env = n0.eval().activations(probe)
print("N0", snapshot(n0, 0)["metric"])
for layer, w in [("fc1", 128), ("fc1", 64), ("fc1", 32), ("fc2", 32), ("fc2", 8)]:
    w0 = n0.graph.nodes[layer]["units"]
    out = []
    for steps in (100, 300, 1000):
        net = refit(_remove_weakest(n0, {layer: w0 - w}, env, probe), steps)
        out.append(round(snapshot(net, 0)["metric"], 1))
    ctrl = [round(snapshot(refit(_copy(n0), s), 0)["metric"], 1) for s in (100, 300, 1000)] if layer == "fc1" and w == 128 else None
    print(layer, w, out, "control(N0 refit more):", ctrl, flush=True)
