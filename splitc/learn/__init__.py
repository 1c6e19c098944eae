"""Learning the split: assignments, regularizers, simplex, schedule, the learn loop."""
