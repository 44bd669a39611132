"""Workers: consume a service's actions."""

from actionbus.workers.base_worker import BaseWorker
from actionbus.workers.processing import WorkerStats
from actionbus.workers.routing import Handler
from actionbus.workers.settings import WorkerSettings

__all__ = ["BaseWorker", "Handler", "WorkerSettings", "WorkerStats"]
