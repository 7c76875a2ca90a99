"""Services: they orchestrate the domain (ml/) and the adapters (db/, registry/, notify/):
training and activation, monitoring runs, the prediction log writer, pruning, simulation."""
