"""clipfleet worker runtime: the tensor math of clipfleet jobs, and the API of users' own training scripts.

The orchestrator (TypeScript) owns jobs, placement, the data plan and the
checkpoint catalogue; this package owns models, losses, data decoding,
optimisation, evaluation and writing checkpoint files. A `task: command`
stage runs the user's script instead, which may call `init()` (see api.py,
docs/byo.md) for exact resume, checkpoints, progress and graceful stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Context

# Must equal the orchestrator's version (package.json); registration refuses a mismatch.
__version__ = "0.1.0"

__all__ = ["__version__", "init", "params_sha256"]


# The two entry points import .api when called, not here: `import clipfleet_worker` must stay
# cheap (no torch, no grpc) for the launcher's probes and `python -m clipfleet_worker info`.
def init(*, total_steps: int | None = None, every_steps: int | None = None, num_samples: int | None = None, batch_size: int | None = None) -> "Context":
    """This rank's Context: registers with the orchestrator when it launched the process, else local mode
    (the arguments are local mode's settings; the spec's win under the orchestrator). See docs/byo.md."""
    from .api import init as _init

    return _init(total_steps=total_steps, every_steps=every_steps, num_samples=num_samples, batch_size=batch_size)


def params_sha256(model: Any) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's (or state dict's) tensors, as built-in
    tasks report it in Finished; a DistributedDataParallel wrapper is looked through."""
    from .models.clip import params_sha256 as _digest

    return _digest(model)
