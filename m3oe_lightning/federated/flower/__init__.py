"""The Flower transport: record conversion and the runner that delivers a round through a Grid."""
