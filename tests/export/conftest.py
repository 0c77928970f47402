"""Fixtures of the export tests: a tiny trained-looking detector, its exported graphs
(exported once per session: an export takes seconds on 2 cores), coco128 photographs."""

from export_helpers import detector, graph, one_torch_thread, photos  # noqa: F401  (fixtures)
