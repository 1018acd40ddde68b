import sys, tempfile, time, json
sys.path.insert(0, "experiments")
from common import set_threads
from archdisc import Config, run_discover
set_threads(1)
tw=[int(v) for v in sys.argv[1].split(",")]; seed=int(sys.argv[2]); extra=json.loads(sys.argv[3]) if len(sys.argv)>3 else {}
c=Config(space="mlp", space_options={"widths":[20,*[256]*len(tw),4]}, data="teacher", data_options={"teacher_widths":tw}, seed=seed, epochs=20, finetune=20, finetune_schedule="cosine", finetune_lr=3e-3, device="cpu", **{"select":"penalty", **extra})
t=time.time()
with tempfile.TemporaryDirectory() as d:
    r=run_discover(c,d,progress=False)
for s in r["select"]["path"]:
    print(s["stage"], list(s["widths"].values()), s["params"], round(s["metric"],2), round(s["se"],2), s.get("lam"), s["chosen"])
print("final", [u["alive"] for u in r["units"].values()], r["params"]["compact"], r["test"]["compact"], "select s", r["select"]["seconds"], "wall", r["wall_seconds"])
