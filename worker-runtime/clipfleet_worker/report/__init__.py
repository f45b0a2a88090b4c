"""Run reports: PNG plots of a job's training curves and evaluation results, tied together by index.md and index.html.

`clipfleet report JOB --out DIR` gathers the job and its per-step history
from the orchestrator, writes them to DIR/report.json, and runs
`python -m clipfleet_worker report --data DIR/report.json --out DIR`, which
lands here. Plotting lives in the worker runtime because matplotlib does; the
input is plain JSON so the report can be re-rendered without the
orchestrator.

report.json (schema "clipfleet.report/v1"), camelCase as the control API:
  {"schema", "generatedAtMs",
   "job": {"id", "name", "state", "reason", "createdAtMs", "updatedAtMs"},
   "summary": {...}  # the CLI's `status --json` summary (steps, samples, losses, restarts, userStops, preemptions, wall time)
   "stages": [{"name", "task", "state", "reason", "restarts", "userStops", "preemptions", "metrics": {name: value},
               "attempts": [{"attempt", "resumedFromStep", "lastStep", "startedAtMs", "endedAtMs",
                             "outcome", "reason", "worldSize"}],
               "checkpoints": [{"step", "committedAtMs", "sizeBytes"}],
               "points": [{"attempt", "step", "epoch", "loss", "lr", "temperature", "samplesPerSecond",
                           "stepSeconds", "dataWaitSeconds", "gradNorm", "tsMs"}],
               "labels": {name: value}}],           # the stage's spec labels
   "compare": {"by": LABEL, "metrics": [names]}}   # optional: `--compare LABEL [--metrics ...]`

A stage's "restarts" are restarts after a failure, "userStops" attempts a user
stopped that were resumed, "preemptions" preempted attempts started again: all
counted by the orchestrator from attempt outcomes. The plots tell them apart
from the attempts' outcomes too.

`clipfleet report JOB1 JOB2 ...` writes {"schema", "generatedAtMs", "jobs":
[{"job", "summary", "stages"}, ...], "compare"?}: each job's own report goes
into a subfolder named by its id, the jobs' curves are drawn side by side per
stage name, and their final metrics go through the same comparison as
--compare (by "job" unless a label is given).

With "compare", stages are compared by one of their labels (e.g. the variant of
an experiment): comparison.md, comparison.json and comparison.png hold a table
with a row per value of that label and a column per metric and combination of
the other labels (e.g. "seg/mIoU (data=10%)"), best value of each column in bold.
"""

from .cli import add_subcommand, run
from .common import (
    HEIGHT_PX,
    SCHEMA,
    WIDTH_PX,
    Plot,
    Report,
    Restart,
    _restarts,
    describe_restarts,
    eval_groups,
    has_series,
    load,
    metric_unit,
    natural_key,
    png_size,
    restart_counts,
)
from .compare import Comparison, compare
from .job import write_report
from .jobs import compare_jobs, job_labels, write_jobs_report

__all__ = [
    "HEIGHT_PX",
    "SCHEMA",
    "WIDTH_PX",
    "Comparison",
    "Plot",
    "Report",
    "Restart",
    "add_subcommand",
    "compare",
    "compare_jobs",
    "describe_restarts",
    "eval_groups",
    "has_series",
    "job_labels",
    "load",
    "metric_unit",
    "natural_key",
    "png_size",
    "restart_counts",
    "run",
    "write_jobs_report",
    "write_report",
]
