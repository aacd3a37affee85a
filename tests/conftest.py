"""Shared test setup."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, or they fight over the cores
    torch.set_num_threads(1)
