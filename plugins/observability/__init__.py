"""What operators see: Prometheus metrics and the per-call health log, fed by guard observers."""
