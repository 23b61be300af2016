"""Resource measurements behind the resource checks: footprint, peak memory per phase, timing.

Nothing here imports torch at import time; ``peak`` also runs as a child process
(``python -m peftcheck.resources.peak``) so one method's peak is not polluted by another's.
"""
