"""Does YOLOv8n import? Ultralytics' model built from its yaml (random weights, nothing
downloaded; ``pip install ultralytics``), through ``archdisc.from_module``: the whole
DetectionModel, then its backbone and neck (every layer before the Detect head, the three
feature maps pooled into one output, since from_module takes one), imported and, with a
random half of every unit group zeroed, extracted; both compared with the module.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/yolo_neck.py
"""
from __future__ import annotations

import torch
from ultralytics.nn import modules as ultra
from ultralytics.nn.tasks import DetectionModel

from archdisc import count_params, extract, from_module
from fx_coverage import zero_half


class Neck(torch.nn.Module):
    """DetectionModel's layers before Detect, run as its forward runs them."""

    def __init__(self, model):
        super().__init__()
        self.layers = model.model[:-1]
        self.outs = model.model[-1].f  # the feature maps Detect reads

    def forward(self, x):
        y = []
        for layer in self.layers:
            if layer.f != -1:
                x = y[layer.f] if isinstance(layer.f, int) else \
                    [x if j == -1 else y[j] for j in layer.f]
            x = layer(x)
            y.append(x)
        return torch.cat([y[i].mean((2, 3)) for i in self.outs], 1)


def main():
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=5, verbose=False).eval()
    x = torch.randn(2, 3, 64, 64)
    try:
        from_module(model, x)
        print("DetectionModel: imported")
    except Exception as e:  # noqa: BLE001 - the point is to see why
        print(f"DetectionModel: {str(e)[:160]}")
    ultra.C2f.forward = ultra.C2f.forward_split  # list(chunk) iterates a Proxy; split does not
    try:
        from_module(model, x)
        print("DetectionModel with C2f.forward_split: imported")
    except Exception as e:  # noqa: BLE001
        print(f"DetectionModel with C2f.forward_split: {str(e)[:160]}")
    neck = Neck(model).eval()
    net = from_module(neck, x)
    with torch.no_grad():
        print(f"backbone + neck: imported, max |diff| {float((net(x) - neck(x)).abs().max()):.2g}")
        zero_half(net, torch.Generator().manual_seed(0))
        graph, compact = extract(net.eval(), inputs=x)
        print(f"half of every unit group zeroed: {count_params(net.graph):,} -> "
              f"{count_params(graph):,} params, max |diff| "
              f"{float((compact(x) - net(x)).abs().max()):.2g}")

if __name__ == "__main__":
    main()
