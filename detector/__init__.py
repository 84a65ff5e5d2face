"""anomalyd detector: streaming LSTM anomaly detection."""
