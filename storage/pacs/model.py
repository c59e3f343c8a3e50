"""What a PACS query found (expected instances) and the errors a pull tells apart."""

from __future__ import annotations

from dataclasses import dataclass, field


class PacsError(RuntimeError):
    """A PACS operation failed for a reason retrying will not fix (refused association, bad credentials, ...)."""


class TransientPacsError(PacsError):
    """A PACS operation failed for a reason that may pass (connection reset, timeout, server busy, 5xx)."""


@dataclass
class ExpectedSeries:
    """One series as the PACS reports it.

    ``instances`` maps SOP Instance UID -> SOP Class UID from the instance-level query;
    ``count`` is the series-level NumberOfSeriesRelatedInstances when the PACS gave it
    (``None`` otherwise). Both are checked: a count above the listed instances means
    instances the query did not list, and the series cannot be proven complete.
    """

    study_uid: str
    series_uid: str
    modality: str = ""
    count: int | None = None
    instances: dict[str, str] = field(default_factory=dict)

    @property
    def n_expected(self) -> int:
        return max(len(self.instances), self.count or 0)


@dataclass
class PullPlan:
    """Everything a query selected: study UID -> its series."""

    studies: dict[str, list[ExpectedSeries]] = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return sum(s.n_expected for series in self.studies.values() for s in series)
