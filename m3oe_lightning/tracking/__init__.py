"""MLflow bookkeeping of runs: the tracked-run lifecycle, provenance, sweeps and run artifacts."""
