"""What adapters borrow from Passback when they call an LMS, built in one place for every caller (the worker,
the roster sync, the read-back API, the connection probe), so services need not import the worker."""

from __future__ import annotations

from adapters import AdapterContext
from adapters.base import LookupCache
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.db import Database
from gateway.services.keys import current_signing_key
from gateway.services.token_cache import DatabaseTokenCache

# LMS lookups (enrollment ids, maximum points) are shared by every adapter in this process.
PROCESS_LOOKUPS = LookupCache()


def build_adapter_context(db: Database, box: SecretBox, lookups: LookupCache | None = None) -> AdapterContext:
    """What adapters borrow from Passback: its current signing key, the database-backed token cache and the
    process's lookup cache. The worker, the roster sync and the read-back API all call LMSs with it."""
    problem = None
    with db.transaction() as session:
        try:
            key = current_signing_key(session, box)
        except SecretUndecryptable as exc:
            # Only LTI 1.3 signs; the other adapters still deliver, and LTI 1.3 deliveries wait with the reason.
            key, problem = None, exc.message
    return AdapterContext(
        signing_key=key,
        token_cache=DatabaseTokenCache(db, box),
        lookups=lookups or PROCESS_LOOKUPS,
        signing_key_problem=problem,
    )
