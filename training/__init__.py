"""anomalyd trainer: refits models from history and publishes versions."""
