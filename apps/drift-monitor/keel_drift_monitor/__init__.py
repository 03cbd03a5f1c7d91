"""The drift-monitor app: consumes the prediction log, emits drift metrics and drift.detected events."""
