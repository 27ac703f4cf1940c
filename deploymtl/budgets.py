"""Per-task accuracy budgets: how much of each task's primary metric a reduced-precision export may lose.

One int8 graph serves several tasks, and each tolerates a different loss, so the budget is per task. Written as
`--max-metric-drop` or the recipe's `export.max_metric_drop`:

    0.05                      every task: 5% relative (a bare number is a relative fraction, as before)
    2%                        every task: 2% relative
    seg=0.5%,depth=1%         per task, relative; tasks not named keep the default (the recipe's, else 5%)
    depth=abs:0.002           absolute: the primary metric may move 0.002 in its own unit in the worse direction
    1%,depth=abs:0.002        a default for the others, then per-task entries

In a recipe the same text, a number, or a map `{task: number | "0.5%" | "abs:0.002"}`. The loss is measured in the
worse direction of the metric (`TaskSpec.metrics`): relative `(fp32 - x) / |fp32|` for higher-is-better metrics,
`(x - fp32) / |fp32|` for lower-is-better ones; absolute the same without the division. An improvement is a
negative loss and always fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import DeploymtlError

DEFAULT_RELATIVE = 0.05
_SYNTAX = "a fraction (0.01), a percentage (1%), abs:VALUE, or TASK=VALUE entries separated by commas"


class Budget(BaseModel):
    """One task's allowance: `value` in the metric's unit (`absolute`) or as a fraction of the fp32 value."""

    model_config = ConfigDict(frozen=True)

    value: float
    absolute: bool = False

    def loss(self, reference: float, candidate: float, lower_is_better: bool) -> float:
        """The loss of `candidate` against `reference` in this budget's terms (negative: an improvement)."""
        if not (math.isfinite(reference) and math.isfinite(candidate)):
            return math.inf if math.isfinite(reference) else 0.0
        worse = (candidate - reference) if lower_is_better else (reference - candidate)
        if self.absolute or abs(reference) < 1e-12:
            return worse
        return worse / abs(reference)

    def fits(self, loss: float) -> bool:
        return loss <= self.value * (1 + 1e-9) + 1e-12  # a loss equal to the budget fits, rounding included

    def ratio(self, loss: float) -> float:
        """Loss over allowance: <= 1 fits; what accuracy control ranks the tasks by (the worst one first)."""
        if self.value > 0:
            ratio = loss / self.value
            return min(ratio, 1.0) if self.fits(loss) else ratio  # a loss at the budget, rounding included, is 1
        return 0.0 if loss <= 0 else math.inf

    def text(self) -> str:
        return f"abs:{self.value:g}" if self.absolute else f"{self.value * 100:g}%"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "kind": "absolute" if self.absolute else "relative", "text": self.text()}


class Budgets(BaseModel):
    """A default budget and per-task ones; `source` is the value as given (a number stays a number in reports)."""

    model_config = ConfigDict(frozen=True)

    given_default: Budget | None = None  # None: the tasks not named take the base's default (`over`), else 5%
    tasks: dict[str, Budget] = {}
    source: float | str | dict[str, Any] = DEFAULT_RELATIVE

    @property
    def default(self) -> Budget:
        return self.given_default or Budget(value=DEFAULT_RELATIVE)

    def for_task(self, name: str) -> Budget:
        return self.tasks.get(name, self.default)

    def over(self, base: Budgets) -> Budgets:
        """These budgets on top of `base` (the CLI's over the recipe's): per-task entries of both, ours winning;
        our default when we gave one, else the base's."""
        return Budgets(given_default=self.given_default or base.given_default, tasks=base.tasks | self.tasks,
                       source=self.source)

    def check_tasks(self, names: Iterable[str], where: str) -> None:
        """Every named task exists in the model."""
        names = list(names)
        unknown = [t for t in self.tasks if t not in names]
        if unknown:
            raise DeploymtlError(f"{where}: no task '{unknown[0]}' in this model",
                                 hint=f"expected budgets for its tasks: {', '.join(names)}")

    def uniform_relative(self) -> float | None:
        """The one relative fraction every task gets, if that is what these budgets are."""
        if self.default.absolute or any(b != self.default for b in self.tasks.values()):
            return None
        return self.default.value

    def to_dict(self, names: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {n: self.for_task(n).to_dict() for n in names}

    def text(self) -> str:
        parts = [self.default.text()] + [f"{k}={v.text()}" for k, v in self.tasks.items()]
        return ",".join(parts)


def uniform(value: float) -> Budgets:
    """Every task the same relative fraction."""
    return parse_budgets(value)


def parse_budgets(value: Any, where: str = "--max-metric-drop") -> Budgets:
    """Budgets from a number, the text syntax of the module docstring, or a {task: value} map; a one-line
    DeploymtlError naming `where` when it is none of these."""
    if isinstance(value, Budgets):
        return value
    if isinstance(value, bool):
        raise DeploymtlError(f"{where} {value}", hint=f"expected {_SYNTAX}")
    if isinstance(value, (int, float)):
        return Budgets(given_default=_number(float(value), where), source=float(value))
    if isinstance(value, Mapping):
        tasks = {}
        for task, entry in value.items():
            if not isinstance(task, str) or not task:
                raise DeploymtlError(f"{where}: task name {task!r}", hint="expected a task name of the model")
            tasks[task] = _entry(entry, f"{where}.{task}")
        return Budgets(tasks=tasks, source=dict(value))
    if isinstance(value, str):
        default, tasks = None, {}
        for part in (p.strip() for p in value.split(",")):
            if not part:
                raise DeploymtlError(f"{where} {value!r}: empty entry", hint=f"expected {_SYNTAX}")
            if "=" in part:
                task, _, entry = (s.strip() for s in part.partition("="))
                if not task:
                    raise DeploymtlError(f"{where} {value!r}: '{part}' names no task", hint="expected TASK=VALUE")
                if task in tasks:
                    raise DeploymtlError(f"{where} {value!r}: task '{task}' given twice",
                                         hint="expected one budget per task")
                tasks[task] = _entry(entry, f"{where} {task}")
            elif default is None:
                default = _entry(part, where)
            else:
                raise DeploymtlError(f"{where} {value!r}: two default budgets",
                                     hint="expected one bare value at most, then TASK=VALUE entries")
        return Budgets(given_default=default, tasks=tasks, source=value)
    raise DeploymtlError(f"{where} {value!r}", hint=f"expected {_SYNTAX}")


def _entry(entry: Any, where: str) -> Budget:
    if isinstance(entry, bool):
        raise DeploymtlError(f"{where} {entry}", hint=f"expected {_SYNTAX}")
    if isinstance(entry, (int, float)):
        return _number(float(entry), where)
    if not isinstance(entry, str):
        raise DeploymtlError(f"{where} {entry!r}", hint="expected a fraction, a percentage or abs:VALUE")
    text = entry.strip()
    absolute = text.lower().startswith("abs:")
    body = text[4:].strip() if absolute else text
    percent = body.endswith("%")
    body = body[:-1].strip() if percent else body
    if absolute and percent:
        raise DeploymtlError(f"{where} {entry!r}: an absolute budget is in the metric's unit, not a percentage",
                             hint="expected abs:VALUE, e.g. abs:0.002, or a relative 0.5%")
    try:
        number = float(body)
    except ValueError:
        raise DeploymtlError(f"{where} {entry!r}", hint=f"expected {_SYNTAX}") from None
    budget = _number(number / 100 if percent else number, where, shown=entry)
    return budget.model_copy(update={"absolute": absolute})


def _number(value: float, where: str, shown: Any = None) -> Budget:
    shown = value if shown is None else shown
    if not math.isfinite(value):
        raise DeploymtlError(f"{where} {shown}", hint="expected a finite number")
    if value < 0:
        raise DeploymtlError(f"{where} {shown}", hint="expected a fraction >= 0, e.g. 0.01")
    return Budget(value=value)
