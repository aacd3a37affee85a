"""Shared test setup."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, or they fight over the cores
    torch.set_num_threads(1)


def pytest_configure(config):
    # pytest-xdist declares this marker; declared here too so that `-p no:xdist` runs of the
    # heavy tests (servers, kernels, browsers: one xdist group, run one at a time) don't warn
    config.addinivalue_line(
        "markers", "xdist_group(name): run in one xdist worker with the group's other tests")
