"""Pure domain: data, training, evaluation, the served predictor, drift checks and
histograms. No database, no MLflow (tests/unit/test_architecture.py)."""
