"""The reproduction suite: ``stablerank reproduce`` (plan, pipeline, claims, report).

* :mod:`~stablerank.repro.plan`: a :class:`~stablerank.config.reproduce.ReproduceConfig` expanded
  into runs, each cached by its config hash; time estimates.
* :mod:`~stablerank.repro.pipeline`: runs the plan (skip finished, resume interrupted, record
  failures), then writes the report.
* :mod:`~stablerank.repro.claims`: SPEC 3's claims and the decision rule.
* :mod:`~stablerank.repro.report`: ``report.md`` and figures from the saved JSON only.
"""

from stablerank.repro.claims import CLAIMS, decide, evaluate_claims
from stablerank.repro.estimate import estimate_seconds, format_plan
from stablerank.repro.pipeline import Runners, execute_plan, execute_run, run
from stablerank.repro.plan import RunSpec, build_plan
from stablerank.repro.report import claims_summary, write_report

__all__ = [
    "CLAIMS",
    "RunSpec",
    "Runners",
    "build_plan",
    "claims_summary",
    "decide",
    "estimate_seconds",
    "evaluate_claims",
    "execute_plan",
    "execute_run",
    "format_plan",
    "run",
    "write_report",
]
