"""Hybrid: candidates from many sources, ranked by a model trained on past windows of the log.

The shape of the H&M Kaggle winners' pipelines (1st place: recall strategies + interaction features + one GBDT;
3rd place: source flags and within-source ranks as features), scaled to one machine:

1. candidate sources per customer (`SOURCES`): own purchases (repurchase), other colours of products the customer
   bought, items bought together with theirs, popular last week / last month, popular in the customer's age band
   and in the departments they buy from, never-sold colours of products that sell now, visual neighbours of recent
   purchases, and new arrivals (items not sold yet) ranked by how much their photo looks like what sells now and
   like what this customer buys;
2. features per (customer, candidate): source flags and within-source ranks; item popularity, freshness (first and
   last sale, item and product level), buyers' mean age and price; the customer's age, activity and price level;
   how often and how recently they bought the item or its product; their share of purchases in the item's
   (predicted) type, group, department, colour...; visual similarity; ALS and bought-together scores;
3. a ranker trained on several past windows, then every statistic is recomputed at the fit date for serving. The
   default (`ranker="buckets"`) learns the purchase rate of interpretable buckets (how recently the customer bought
   the item or its product, each source's rank, visual similarity) and combines them by noisy-or; the customer's
   own purchases of the last 90 days come first in repurchase's order, and the last 4 of 12 places go to the best
   items nobody has bought yet. LightGBM (`ranker="binary"|"lambdarank"`, the number of trees chosen by the real
   MAP@12 of the newest window) is the alternative; on the H&M sample's leak-free protocol it scored lower
   (README, Results), which is why it is not the default at this data size.

Item attributes follow the leak-free rule of `RecData.describe`: the catalog row of items bought before the time
the features stand at, tags predicted from the photo otherwise. No feature says whether an item has a row.

Modules: `schema` (sources, feature columns, buckets), one module per source (`repurchase`, `same_product` (other
colours, never-sold colours), `pairs` (bought together), `popularity` (what sells now, by age band and department),
`visual`, `arrivals` (the never-sold pool ordered by taste, the taste source)), `state` (the statistics at a date),
`block` (the one feature path: a block of customers, one customer being a block of one), `rankers`, `training` (the
windows), `policy` (how the final list is cut, filled and ordered) and `model` (`Hybrid`).
"""

from fashionrec.recommend.hybrid.model import Hybrid, product_codes
from fashionrec.recommend.hybrid.pairs import co_purchases as _co_purchases
from fashionrec.recommend.hybrid.rankers import _blocks_of, _cut_set, _cut_to_sizes, choose_source_sizes
from fashionrec.recommend.hybrid.schema import BUCKET_FEATURES, BUCKETS, FEATURES, SOURCES
from fashionrec.recommend.hybrid.state import _State

__all__ = [
    "BUCKETS",
    "BUCKET_FEATURES",
    "FEATURES",
    "SOURCES",
    "Hybrid",
    "_State",
    "_blocks_of",
    "_co_purchases",
    "_cut_set",
    "_cut_to_sizes",
    "choose_source_sizes",
    "product_codes",
]
