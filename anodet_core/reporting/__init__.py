"""What analysts look at: the night's HTML page (:mod:`.night_page`), its pictures (:mod:`.panels`) and plots
(:mod:`.plots`); ``anodet evaluate --plots`` (:mod:`.evaluation_plots`)."""

MAX_FINDINGS = 200  # finding cards on one page; the rest are counted, and listed by `anodet query`
