"""The end-to-end demo: ``python -m actionbus.demo`` (or ``make demo``).

Two services, each in its own OS process, talk through Redis Streams:

- ``orders`` (``actionbus.demo.orders``) sends actions in all three patterns and receives a
  callback in its own worker;
- ``inventory`` (``actionbus.demo.inventory``) is a worker whose handlers keep stock levels
  in a ``RedisStateManager``.

``actionbus.demo.runner`` starts Redis (unless ``REDIS_URL`` is set), the two services,
stops them with SIGTERM and prints a summary; ``actionbus.demo.summary`` checks it.
"""
