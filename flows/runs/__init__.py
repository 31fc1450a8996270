"""Derived runs over a published version: evaluation of a model on its probes, replay through the agents."""
