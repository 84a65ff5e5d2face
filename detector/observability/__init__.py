"""What an operator watches: Prometheus metrics, HTTP probes, logs."""
