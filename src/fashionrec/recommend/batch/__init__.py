"""The nightly batch job: top-k for every customer, streamed to a CSV in the H&M submission format.

    from fashionrec.recommend.batch import recommend_all
    recommend_all(model, customers, 12, "recs.csv")                 # one process
    recommend_all(model, customers, 12, "recs.csv", workers=4)      # Ray: customers sharded over 4 workers

Customers are taken `block_size` at a time: a model with a block API (`recommend_block(users, k) -> list of
lists of item ids`, e.g. the hybrid, which builds candidates and features for the whole block with array
operations) gets the block; any other model gets `recommend_many`, or `recommend` per customer. Memory stays
bounded by one block (rows are written as they come, to a temporary file renamed into place at the end: a killed
job leaves no half-written output). Every row has k items: short lists are filled from what sells now (the
popularity baseline's list). With workers > 1 the same blocks run on Ray actors that share the fitted model
through the object store (`fashionrec.recommend.batch.ray`); the output is identical, row for row.

Modules: `rows` (one block's rows and the block loop, shared by both runners), `job` (`recommend_all`, the local
runner), `ray` (the Ray runner).
"""

from fashionrec.recommend.batch.job import AUTO_WORKERS_FROM, recommend_all, resolve_workers
from fashionrec.recommend.batch.rows import Fill, complete, popular_fill, recommend_lists, write_blocks, write_rows

__all__ = [
    "AUTO_WORKERS_FROM",
    "Fill",
    "complete",
    "popular_fill",
    "recommend_all",
    "recommend_lists",
    "resolve_workers",
    "write_blocks",
    "write_rows",
]
