"""``prepare``: interaction logs and item titles -> a data-set folder in the authors' format.

Modules: :mod:`~dealrec.data.prepare.sniff` and :mod:`~dealrec.data.prepare.columns` (file
layouts and column recognition), :mod:`~dealrec.data.prepare.readers` and
:mod:`~dealrec.data.prepare.times` (reading), :mod:`~dealrec.data.prepare.titles` (title
clean-up), :mod:`~dealrec.data.prepare.steps` (the pure filtering and splitting steps),
:mod:`~dealrec.data.prepare.card` (the data card and prompt phrases),
:mod:`~dealrec.data.prepare.write` (the folder writer), :mod:`~dealrec.data.prepare.pipeline`
(the library call :func:`~dealrec.data.prepare.pipeline.prepare`) and
:mod:`~dealrec.data.prepare.cli` (the command). The page ``docs/own-data.md`` describes the use.
"""
