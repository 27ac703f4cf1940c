"""Checkpoints of the public AdaShare code (github sunxm2357/AdaShare) -> deploymtl `supernet.pt`.

One concept per module: `architecture.py` (the public YAML or flags: backbone, tasks, input convention),
`checkpoint.py` (the `*_model.pth.tar`, weights-only), `policy.py` (the policy pickle, through a restricted
unpickler), `convert.py` (key mapping, the supernet with the policy fixed, the embedded recipe), `cost.py` (FLOPs and
latency of the public inference against the deployed tree), `report.py` (import_report.json / .md) and
`importer.py` (the command's order of work). docs/methods.md ("Importing public AdaShare checkpoints") has the facts.
"""

from .importer import IMPORT_FILES, ImportOptions, import_adashare, parse_size

__all__ = ["IMPORT_FILES", "ImportOptions", "import_adashare", "parse_size"]
