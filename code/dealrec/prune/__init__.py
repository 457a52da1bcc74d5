"""The pruning pipeline (paper §4, Alg. 1): its configuration (:mod:`.config`) and the stages in
order, surrogate → influence → effort → selection (:mod:`.pipeline`)."""
