"""The site's Flower ClientApp: a legacy client (the only path to SecAgg+ in flwr 1.42)
whose mods, outermost first, mask (``secaggplus_mod``), add the site's noise
(``site_noise_mod``) and clip the update (``fixedclipping_mod``) of what ``fit`` returns."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import Client, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from silolearn.federation import site


class SiteClient(NumPyClient):
    def __init__(self, context: Any) -> None:
        self.site_context = context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        new, weight = site.fit(self.site_context, parameters, config)
        return new, weight, {}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        """Not an evaluation the coordinator sees (no metric leaves the site): the round's
        aggregate becomes the site's own shared version."""
        site.keep_version(self.site_context, parameters, config)
        return 0.0, 1, {}


def client_fn(context: Any) -> Client:
    return SiteClient(context).to_client()


def secagg_when_asked(msg: Any, ctxt: Any, call_next: Any) -> Any:
    """``secaggplus_mod`` for the messages of a SecAgg+ round (it fails on any other)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(
    client_fn=client_fn, mods=[secagg_when_asked, site.site_noise_mod, fixedclipping_mod]
)
