"""The quarantine web page for people (``/ui/``): see ``pages.py``."""
