"""Studies on real networks: end-to-end analyses that print their figures and one JSON line."""
