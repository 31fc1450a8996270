"""Seed tables shipped as package data (see seeds/README.md and personaloom.stages.catalogue)."""
