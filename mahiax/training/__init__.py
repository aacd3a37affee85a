"""Training: one step, the objective it backpropagates, and what a run needs around it.

- :mod:`~mahiax.training.objective`: the objective (weighted task losses plus the router's
  terms), defined once;
- :mod:`~mahiax.training.trainer`: the trainer (one forward, one backward a step);
- :mod:`~mahiax.training.precision`: mixed precision and clipping;
- :mod:`~mahiax.training.distributed`: data-parallel training on one machine;
- :mod:`~mahiax.training.checkpoint`: saving and resuming.

Imports the model and the foundations, never telemetry or the lab.
"""
