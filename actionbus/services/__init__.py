"""Services: business logic on top of clients and state managers."""

from actionbus.services.base_service import BaseService

__all__ = ["BaseService"]
