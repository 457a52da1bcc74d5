"""The fine-tuning half (BIGRec, paper §4 and §5.1): the base model and its LoRA set-up
(:mod:`.model`), the training loss (:mod:`.lm_loss`), LoRA fine-tuning (:mod:`.finetune`),
generation (:mod:`.generate` with the CPU beam search of :mod:`.beam` and its in-place KV cache
:mod:`.kv_buffer`), and grounding of generated titles to items (:mod:`.ground`, with the title
trie of :mod:`.title_trie`). Tiny model folders in the layouts users bring: :mod:`.tiny_models`.

Nothing here imports the pruning half (:mod:`dealrec.surrogate`, :mod:`dealrec.scores`,
:mod:`dealrec.select`, :mod:`dealrec.prune`) or the study."""
