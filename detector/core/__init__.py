"""The pure core: readings, the model, per-stream state, scoring rules and the engine.

Imports only the standard library, numpy, torch and orjson; no Kafka client, no
prometheus_client, no environment (tests/unit/test_boundaries.py checks every module).
"""
