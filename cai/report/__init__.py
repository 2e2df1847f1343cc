"""`cai report RUN`: a static HTML page (plots saved as PNG beside it) that shows what a `cai run` did.

    cai report outputs/quickstart

Sections: principle usage; how often revisions changed the text and how lengths moved; judge probabilities,
position consistency and invalid rate; chosen vs rejected lengths; training curves; eval win-rate with its
interval and over-refusal; a few example chains. Everything is local: no scripts or fonts from the network.

page.py assembles the page (verdict first); data.py (generate, judge), training.py (training curves, PPO, online
DPO) and evaluation.py (win-rates, verdict) build its sections; plots.py holds what they share.
"""
