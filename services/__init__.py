"""Moat's four services: ingress, scanner, delivery and api. Each runs as
``python -m services.<name>``; ``python -m services`` runs all four."""
