"""One night: history resolution, the plan, batches scored in workers, the preparation pool, the report."""
