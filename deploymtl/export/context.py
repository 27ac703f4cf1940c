"""`ExportContext`: what every export stage reads (the artifact, its options and samples, the tolerances, where files
go) and where each stage records its time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..formats.static import StaticArtifact
from ..verify.compare import Tolerance, resolve_tolerances
from .options import ExportOptions
from .samples import ExportSamples


@dataclass
class ExportContext:
    art: StaticArtifact
    options: ExportOptions  # complete: the model recipe's defaults filled in
    samples: ExportSamples
    tolerances: dict[str, Tolerance]  # per output, for the final parity at the export's precision
    staging: Path  # the output set being made
    where: str  # the model file, for messages
    log: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.art.task_names

    @property
    def chw(self) -> dict[str, int]:
        i = self.art.input
        return {"channels": i["channels"], "height": i["height"], "width": i["width"]}

    @property
    def input_dtype(self) -> str:
        """float32, or uint8 when the preprocessing is baked into the graph (`export.preprocess`)."""
        return str(self.art.input.get("dtype", "float32"))

    def choose_precision(self, precision: str) -> None:
        """The precision the file is in, once `auto` has chosen it: the options and the final parity's tolerances
        follow (the user's atol/rtol overrides kept)."""
        if precision == self.options.precision:
            return
        o = self.options
        self.options = o.model_copy(update={"precision": precision})
        self.tolerances = resolve_tolerances(precision, self.names, atol=o.atol, rtol=o.rtol,
                                             per_output=o.per_output)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
