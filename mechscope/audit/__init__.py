"""Audit a network for planted behaviours: plant labelled cases, find what was changed, score it."""
