"""consumers.risk.signals: one small pure class per signal family, each with named output (`Hit`).

A signal keeps only the state it needs, in bounded maps, and returns strengths in 0..1; the
engine turns them into weighted, decaying contributions. Nothing here does I/O or reads a clock.
"""
