"""A corpus of training-loop bugs that PyTorch users reported in public, for the doctor.

Each case is one module here, reproducing one public report in our own minimal code (never
copied from the thread): its docstring names the report and its accepted fix, ``SOURCE`` is
the report's address, and it defines

- ``buggy()``: the loop as reported (a :class:`~tests.doctor_corpus.common.Loop`);
- ``fixed()``: the same loop after the fix the thread accepted;
- ``applied()`` (where the doctor prints a fix): the buggy loop with the doctor's printed fix
  applied as written, which must run and pass the doctor.

The line the doctor must name ends with ``# doctor[buggy]: <kind>`` (read by
:func:`~tests.doctor_corpus.common.expected`). ``ARCH`` says the architecture, ``STATE``
where the loop keeps its state, ``KIND`` the doctor kind the report belongs to.
"""
