"""The errors archdisc raises on bad input.

Every one derives from :class:`ArchdiscError`: the ``archdisc`` command catches it and
prints its one-line message (which names the field and the fix) with exit status 2
(:class:`TrainingError`: 1). Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class ArchdiscError(Exception):
    """Base of every error archdisc raises on bad input or an unusable run."""


class ConfigError(ArchdiscError, ValueError):
    """A bad config: the message names the field and what is allowed."""


class RunError(ArchdiscError, RuntimeError):
    """The run folder cannot be used as asked (another run is there, nothing to resume)."""


class TrainingError(ArchdiscError, RuntimeError):
    """Training diverged (NaN / inf loss); the last good checkpoint is kept."""


class GraphError(ArchdiscError, ValueError):
    """A malformed ArchGraph; the message names the node or edge and the fix."""


class MissingFileError(ArchdiscError, FileNotFoundError):
    """A file archdisc needs (a saved model, a run's graph) is not there."""


class DataError(ArchdiscError, FileNotFoundError, ValueError):
    """A dataset is missing, incomplete, malformed or cannot be built as asked."""


class ExtractionError(ArchdiscError, ValueError):
    """The compact model does not compute the supernet's function (or cannot be built)."""


class ExportError(ArchdiscError, RuntimeError):
    """An export could not be written or does not reproduce the PyTorch model."""


class RenderError(ArchdiscError, RuntimeError):
    """Rendering failed (most often: Graphviz's ``dot`` program is missing)."""


class ModelImportError(ArchdiscError, ValueError):
    """A user's module cannot be imported into an ArchGraph (an unsupported call, a
    trace that fails, a result that differs from the module's)."""


class Stopped(TrainingError):
    """The job stops because another of its processes is gone."""
