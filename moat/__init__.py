"""Moat's shared package: what every service needs, defined once.

- ``settings``: the one configuration model (YAML file from ``MOAT_CONFIG`` plus ``MOAT_*``
  environment overrides).
- ``model``: message states, the versioned queue bodies, findings and verdicts.
- ``topology``: the queues, declared once as data.
- ``broker``: the AMQP connection, confirmed publishing and the consumer base class.
- ``spool``: the durable message store (raw bytes on disk).
- ``db`` / ``repository``: the database schema and every query the services run.
- ``replies``: the catalogue of SMTP replies.
"""

__version__ = "0.1.0"
