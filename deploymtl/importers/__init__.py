"""Importers: checkpoints written by the methods' public code become deploymtl artifacts.

One sub-package per public codebase (`importers/<name>/`): it reads the public files safely (weights only; a
restricted unpickler where the public code pickles), checks them against the architecture they claim, and writes a
deploymtl `supernet.pt` (or a static `pruned.pt`) through `deploymtl.formats`, so that prune, export, verify, profile
and run work on it unchanged. `deploymtl import <name> ...` (`cli/imports.py`) is the command.
"""
