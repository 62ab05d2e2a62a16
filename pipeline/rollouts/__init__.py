"""The revision protocol and the trajectories it produces: one turn function, typed records, their durable store."""
