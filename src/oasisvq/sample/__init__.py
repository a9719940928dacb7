"""New brains: sample code grids from a run's prior and decode them (``sample_images``)."""
