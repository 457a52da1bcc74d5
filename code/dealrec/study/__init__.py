"""The reproduction study built on both halves: its configuration (:mod:`.config`), the runs
(:mod:`.runner`), the record folder (:mod:`.records`), paired statistics (:mod:`.paired`) and the
report (:mod:`.report`). ``python -m dealrec.study`` is its command line."""
