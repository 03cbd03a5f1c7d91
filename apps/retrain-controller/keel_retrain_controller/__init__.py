"""The retrain-controller app: reacts to retrain triggers, runs the keel.pipelines loop, promotes or rolls back."""
