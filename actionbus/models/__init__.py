"""Wire models."""

from actionbus.models.actions import DomainAction, DomainActionResponse, ErrorDetail

__all__ = ["DomainAction", "DomainActionResponse", "ErrorDetail"]
