"""Hypothesis property tests of PEFT on tiny CPU models, and of the suite loader."""
