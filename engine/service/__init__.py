"""The Workstation facade: every operation the faces (CLI, TUI, REST API) offer.

`Workstation` here is the in-process implementation: it opens the store itself. It is what a
one-shot command uses when no server runs, and what the server wraps. The HTTP client in
`tui/client.py` offers the same operations (the registry in `core.OPERATIONS`) over a running
server. Operations are grouped by what they touch, one module each; see `core` for what an
operation is.
"""

from __future__ import annotations

from engine.service.ab import ABOps
from engine.service.board import BoardOps
from engine.service.core import (
    OPERATIONS,
    Conflict,
    NotFound,
    Operation,
    Request,
    Response,
    ServiceError,
    status_of,
)
from engine.service.data import DataOps
from engine.service.evaluation import EvaluationOps
from engine.service.features import FeaturesOps
from engine.service.feeds import FeedOps
from engine.service.live import LiveOps
from engine.service.monitoring import MonitoringOps
from engine.service.outcomes import OutcomeOps
from engine.service.paper import PaperOps
from engine.service.parity import ParityOps
from engine.service.prediction import PredictionOps
from engine.service.registry import RegistryOps
from engine.service.retraining import RetrainOps
from engine.service.stored import StoredOps
from engine.service.system import SystemOps
from engine.service.training import TrainingOps
from engine.service.upkeep import UpkeepOps

__all__ = [
    "OPERATIONS",
    "Conflict",
    "NotFound",
    "Operation",
    "Request",
    "Response",
    "ServiceError",
    "Workstation",
    "status_of",
]


class Workstation(
    TrainingOps,
    DataOps,
    FeaturesOps,
    UpkeepOps,
    PredictionOps,
    RegistryOps,
    OutcomeOps,
    ABOps,
    MonitoringOps,
    RetrainOps,
    EvaluationOps,
    PaperOps,
    BoardOps,
    ParityOps,
    FeedOps,
    LiveOps,
    StoredOps,
    SystemOps,
):
    """Every operation, in process (see the module docstring). Closing it stops the training
    jobs it owns (`TrainingOps.close`, first in line for that), then closes the store."""
