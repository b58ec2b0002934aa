"""Reports: MLflow store → generated Markdown tables, CSV and plots under experiments/."""
