"""Training system: one LightningModule (loss, metrics, optimisers, AutoML step) for every model."""
