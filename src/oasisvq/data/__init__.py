"""Data: readers for every layout, decoded once into uint8 slices (see ``loader``)."""
