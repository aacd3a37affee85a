"""The model: MAHIA-X as the summary describes it, written correctly.

- :mod:`~mahiax.model.hybrid`: the whole model (text + tabular encoders, heads, the encode
  that runs once per step);
- :mod:`~mahiax.model.moe`: the mixture of experts (router, stacked SwiGLU experts, balance);
- :mod:`~mahiax.model.fabric`: the dynamic layer routing;
- :mod:`~mahiax.model.memories`: the graph-diffusion and tiny memories;
- :mod:`~mahiax.model.weighting`: Dynamic Weight Averaging of the task losses;
- :mod:`~mahiax.model.data`, :mod:`~mahiax.model.validation`: the synthetic batches and the
  input checks that run before any tensor reaches the model.

Imports only the foundations (:mod:`mahiax.config`, :mod:`mahiax.tasks`, ...), never the
training, telemetry or lab layers.
"""
