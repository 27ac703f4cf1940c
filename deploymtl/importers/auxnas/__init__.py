"""Checkpoints of the public Aux-NAS release (github ethanygao/Aux-NAS, ViT-based) -> deploymtl `pruned.pt`.

One concept per module: `config.py` (the release's JSON config: timm model, widths, hooks, tasks, input size),
`checkpoint.py` (the `{'model_state_dict': ...}` file, weights-only, every key and shape checked), `network.py`
(the primary network and the supernet as static graph specs), `links.py` (the links, their alphas and the plan),
`cost.py` (parameters and FLOPs of the public evaluation vs the deployed model), `report.py` (import_report.json /
.md) and `importer.py` (the command's order of work). docs/methods.md ("Aux-NAS ViT release") has the facts.
"""

from .importer import IMPORT_FILES, ImportOptions, import_auxnas

__all__ = ["IMPORT_FILES", "ImportOptions", "import_auxnas"]
