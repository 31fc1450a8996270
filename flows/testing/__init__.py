"""Test support shipped with the package: a fake OpenAI-compatible server on a real loopback socket.

Tests and benchmarks of this project import from here only (never from each other); users can use the
same server to test their own pipelines without a key: `python -m personaloom.testing.fake_openai`.
"""
