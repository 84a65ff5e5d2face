"""SKAB, the Skoltech Anomaly Benchmark: a public multivariate one (``anomalyd evaluate skab``)."""
