"""Moved: the scripted probe writer is `personaloom.testing.probe_model`."""

from personaloom.testing.probe_model import probe_writer

__all__ = ["probe_writer"]
