"""The worker's typed errors: one small hierarchy with stable codes.

Mirrors orchestrator/src/domain/errors.ts. `code` is stable (tests and the
orchestrator may match on it); `failure_kind` is the WorkerFailure.kind the
agent reports for an error that ends a rank ("exception", "data",
"checkpoint_corrupt", "nan"). Messages are one line, name the field or file
and the bad value, and say what to fix. Bugs are plain exceptions/asserts.
"""

from __future__ import annotations


class ClipfleetWorkerError(Exception):
    """Base of every error the worker raises on purpose (a user or environment problem, not a bug)."""

    code: str = "INTERNAL"
    failure_kind: str = "exception"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ClipfleetWorkerError):
    """A config value or config-referenced file is unusable; `field` is the dotted spec path when known."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class DataError(ClipfleetWorkerError):
    """Training or eval data is unreadable or inconsistent; names the shard (and sample key) when known."""

    code = "DATA"
    failure_kind = "data"

    def __init__(self, message: str, shard: str | None = None, key: str | None = None) -> None:
        where = shard if key is None else f"{shard}#{key}" if shard else f"sample {key}"
        super().__init__(f"{where}: {message}" if where else message)
        self.shard = shard
        self.key = key


class ApiUsageError(ClipfleetWorkerError):
    """A training script used the clipfleet_worker API in a way that cannot work (a symlink in a
    checkpoint, two ranks writing one file name, local checkpoints of several ranks without a
    process group); a bug in the script, reported with its fingerprint like any other."""

    code = "FAILED_PRECONDITION"


class CheckpointError(ClipfleetWorkerError):
    """A checkpoint file is missing, truncated, or fails its hash; the orchestrator may fall back to an older one."""

    code = "CHECKPOINT_CORRUPT"
    failure_kind = "checkpoint_corrupt"

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class NonFiniteError(ClipfleetWorkerError):
    """The loss or gradients became NaN/inf and train.on_nan is "fail"."""

    code = "NON_FINITE"
    failure_kind = "nan"


class WorkerEnvironmentError(ClipfleetWorkerError):
    """The node lacks something the config needs (a GPU for nccl, a library); not fixable by retrying."""

    code = "ENVIRONMENT"
