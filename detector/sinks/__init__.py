"""Where incidents go besides the alerts topic: an optional Alertmanager sink.

Kept import-light: :mod:`detector.config` imports the settings module from here.
"""
