"""The tiny GatedMTL layout the rewrite tests shape: seeded gates (a quarter of the channels task-specific), the
static graph exported and simplified as `deploymtl export` does before shaping. Imported by the tests and run in
subprocesses (tests/test_export_determinism.py)."""

from __future__ import annotations

import onnx
import torch

from deploymtl.export.onnx import export_onnx
from deploymtl.export.simplify import PASSES, run_pass
from deploymtl.families import build_supernet, family_spec
from deploymtl.surgery.plan import make_plan
from deploymtl.tasks import TaskSpec


def gated_static_graph() -> tuple[onnx.ModelProto, torch.nn.Module]:
    """(the exported, simplified static graph, the static model)."""
    torch.manual_seed(0)
    tasks = [TaskSpec(name="seg", kind="segmentation", channels=5), TaskSpec(name="depth", kind="depth")]
    model = build_supernet("gated", tasks, {"blocks": [1, 1, 1, 1], "width": 8, "head": "light",
                                            "head_hidden": 16}, {}).eval()
    g = torch.Generator().manual_seed(0)
    d = model.decisions()
    d["gates"] = {t: [[int(v) for v in (torch.rand(s.cout, generator=g) < 0.25).tolist()] for s in model.slots]
                  for t in model.task_names}
    model.set_decisions(d)
    cut = family_spec("gated").surgeon.prepare(model, make_plan(model, "gated"))
    cut.apply()
    static = cut.build().build()
    proto = export_onnx(static, channels=3, height=48, width=64, outputs=cut.tasks)
    for name in PASSES:  # as `deploymtl export` simplifies before shaping (the blend weights become constants)
        proto = run_pass(proto, name)
    return proto, static
