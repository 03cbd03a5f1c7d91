"""The feature-worker app: wiring only (see keel.features.FeatureWorker)."""
