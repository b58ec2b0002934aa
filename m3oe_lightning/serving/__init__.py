"""Using a trained model outside training: export to portable formats and checks of the export."""
