"""The three runs of every catalog entry: the bug, the summary's fix, the right fix.

Its own light module (no torch): the command line offers them as choices before anything
heavy is loaded."""

VARIANTS = ("buggy", "summary", "fixed")
