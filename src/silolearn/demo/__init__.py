"""``silolearn demo``: the main job on real data, through the HTTP service (``run``), with a
client of ``silolearn serve`` that other simulations reuse (``client``), the production
traffic and rounds over the API (``production``), what is shown after the rounds
(``governance``) and the HTML report on the service's templates (``report``)."""

from silolearn.demo.run import run_demo
from silolearn.demo.tenants import LEAK_CANARIES, LEAK_DRILL, SOURCES

__all__ = ["LEAK_CANARIES", "LEAK_DRILL", "SOURCES", "run_demo"]
