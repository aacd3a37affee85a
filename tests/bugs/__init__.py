"""Tests: see docs/tests.md for what goes here."""
