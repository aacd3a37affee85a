"""The classroom: what ties the lab to JupyterLab and to a class on a hub.

- :mod:`~mahiax.classroom.class_view`: a class's attempts summarised for the instructor,
  sent by the learners' kernels to the hub's class service and read back by the Class page;
- :mod:`~mahiax.classroom.jupyter_proxy`: the dashboard as a JupyterLab launcher tile.

Light on purpose (no torch): the hub's service and the dashboard import it.
"""
