"""clipfleet worker runtime: the tensor math of clipfleet jobs.

The orchestrator (TypeScript) owns jobs, placement, the data plan and the
checkpoint catalogue; this package owns models, losses, data decoding,
optimisation, evaluation and writing checkpoint files.
"""

# Must equal the orchestrator's version (package.json); registration refuses a mismatch.
__version__ = "0.1.0"
