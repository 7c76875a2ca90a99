"""MLflow adapter: tracking and model registry under deadlines, training runs, and the
warm-up of the heavy imports."""
