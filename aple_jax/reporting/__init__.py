"""Reports over many runs (`python -m aple_jax.report`): reading runs, seed groups, the aggregate, tables, plots."""
