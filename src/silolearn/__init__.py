"""silolearn: continuous learning per tenant, on premises, without leaks between tenants or
from evaluation into training."""

from silolearn.errors import SiloError
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.version import __version__ as __version__
from silolearn.workspace import Tenant, Workspace

__all__ = ["Purpose", "SiloError", "Tenant", "TenantScope", "Workspace"]
