"""The doctor: the lab's detectors on your own training loop.

>>> from mahiax import doctor
>>> report = doctor.examine(step, steps=6, model=model, optimizer=opt)   # doctest: +SKIP
>>> print(report)                                                        # doctest: +SKIP

``step(i)`` runs one training step of your code. The report lists findings from a fixed
vocabulary (:data:`KINDS`), each at the line of your code to change, with the evidence in
numbers, the fix and the lesson that teaches it; an exception your loop raised is kept and
explained. From a shell: ``python -m mahiax doctor file.py:function --steps 6``.
"""

from mahiax.doctor.examine import examine
from mahiax.doctor.findings import KINDS, Finding, LoopError
from mahiax.doctor.report import Report

__all__ = ["KINDS", "Finding", "LoopError", "Report", "examine"]
