"""TIGER, DEALRec's second recommender (paper Table 2): generative retrieval with semantic IDs.

TIGER (Rajput et al., NeurIPS 2023) gives each item a tuple of codes from a residual quantiser over
item content embeddings, plus one level that separates items whose codes collide
(:mod:`dealrec.tiger.semantic_ids`). A small T5 encoder-decoder, trained from scratch, maps a
user's history (its items' code tuples, one after the other) to the next item's code tuple
(:mod:`dealrec.tiger.model`, :mod:`dealrec.tiger.train`); beam search constrained to the valid
code tuples (:mod:`dealrec.tiger.trie`) ranks the items (:mod:`dealrec.tiger.evaluate`).

:mod:`dealrec.tiger.cli` trains it on a selection's few-shot files (``gen_fewshot.py``) and scores
it on the same test users and metrics as BIGRec (``finetune.sh <data> --backend tiger``).

Imports point one way: this package uses ``core``, ``data``, ``metrics`` and the grounding's item
embeddings (``llm.ground``); ``llm`` never imports it, and it never imports the pruning half
(surrogate, scores, select, prune) or the study.
"""
