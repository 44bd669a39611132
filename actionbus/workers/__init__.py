"""Workers: consume a service's actions."""

from actionbus.workers.base_worker import BaseWorker
from actionbus.workers.routing import Handler
from actionbus.workers.settings import WorkerSettings
from actionbus.workers.stats import WorkerStats

__all__ = ["BaseWorker", "Handler", "WorkerSettings", "WorkerStats"]
