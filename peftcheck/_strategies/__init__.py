"""Implementation of :mod:`peftcheck.strategies`; import from there, not from here."""
