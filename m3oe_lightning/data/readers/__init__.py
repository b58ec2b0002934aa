"""Dataset readers: one module per source; each owns its files, its download and its partition keys."""
