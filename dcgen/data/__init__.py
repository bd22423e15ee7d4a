"""Occupancy data: the class table, the Zarr scene store, source-format importers, the synthetic city, readers."""
