"""The Numenta Anomaly Benchmark: windows, NAB's scorer, replay and `anomalyd evaluate nab`."""
