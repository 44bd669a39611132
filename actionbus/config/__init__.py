"""Settings (seed 003 names the module ``config.base_settings``; both paths work)."""

from actionbus.config.base_settings import CommonAppSettings
from actionbus.config.base_settings import mask_url as mask_url

__all__ = ["CommonAppSettings"]
