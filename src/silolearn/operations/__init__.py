"""Continuous operation on top of the round: what starts a round (the scheduler and its
triggers), what watches what is served (monitors' signals acted on by policy), and how a
new version takes traffic (canary rollout). Everything here decides by the one clock
(``silolearn.clock``) and audits every decision."""
