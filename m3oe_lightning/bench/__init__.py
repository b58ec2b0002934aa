"""Benchmarks (``make bench``): throughput, federated rounds, scaling, reproduction cost."""
