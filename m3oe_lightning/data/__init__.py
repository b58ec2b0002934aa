"""Data: readers turn raw files into one encoded table; the datamodule serves it as tensors."""
