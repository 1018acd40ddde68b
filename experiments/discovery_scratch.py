"""Issue 15 diagnostic: the same widths trained from a fresh init with the select refit (Adam 3e-3, cosine) for 300 / 1000 steps. python experiments/discovery_scratch.py 8,4 0 "[[256,256],[32,256],[32,16]]" """
import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from archdisc import Config, build_space, compile_graph
from archdisc.data import load_data
from archdisc.select import _tools
torch.set_num_threads(1)
tw = [int(v) for v in sys.argv[1].split(",")]; seed = int(sys.argv[2])
cfg = Config(space="mlp", space_options={"widths": [20, *[256]*len(tw), 4]}, data="teacher",
             data_options={"teacher_widths": tw}, seed=seed, device="cpu")
data = load_data("teacher", seed=seed, teacher_widths=tw)
probe, refit, snapshot = _tools(data, cfg, "cpu")
for ws in eval(sys.argv[3]):
    out = []
    for steps in (300, 1000):
        torch.manual_seed(seed)
        net = compile_graph(build_space("mlp", widths=[20, *ws, 4], in_shape=None)).train()
        out.append(round(snapshot(refit(net, steps), 0)["metric"], 1))
    print(ws, out, flush=True)
