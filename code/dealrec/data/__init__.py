"""The data: a data set folder as typed sequences (:mod:`.dataset`), the one alpaca-style prompt
(:mod:`.prompts`) and the few-shot example files built from both (:mod:`.fewshot`)."""
