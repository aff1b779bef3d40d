"""Scale-out on a Ray cluster: the sharded static pass and sandbox jobs as Ray tasks."""
