"""New brains as files: samples of a run's prior written with their codes and settings."""
