"""The tests of MAHIA-X Lab: one folder per part of the lab (docs/tests.md)."""
