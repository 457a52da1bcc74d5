"""What every stage shares and none owns: crash-safe files (:mod:`.files`), cached outputs and
their manifests (:mod:`.cache`), logs (:mod:`.logs`), output locks (:mod:`.locking`), fault
injection for the reliability tests (:mod:`.faults`), process ranks (:mod:`.dist`), the machine's
abilities (:mod:`.hardware`), seeding (:mod:`.seeds`) and token-id rows (:mod:`.token_rows`)."""
