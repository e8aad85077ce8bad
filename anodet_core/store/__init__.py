"""The store: layout and report schemas, the night's Zarr maps, SQL over the reports."""
