"""Simulated fleets of several styles: the generator, a statistical baseline, incident scoring
and ``anomalyd evaluate fleet``."""
