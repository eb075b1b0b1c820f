"""Who may pass: the access rules (:mod:`.access`), liveness verdicts (:mod:`.liveness`)
and which remote commands are obeyed (:mod:`.remote`)."""
