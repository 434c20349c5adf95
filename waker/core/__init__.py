"""Layer 3, the pure core: the lifecycle, the scheduler and the other decisions, as pure functions of
the values handed to them (no I/O, no clock reads), and the seams the shell reaches the world through."""
