"""Entry of the sandboxed worker (``python -m safeloader.worker``): confinement comes before anything else.

``finish_confinement`` loads seccomp and reports the in-worker layers; only then are torch, diffusers and,
later, the verified pipeline code imported.
"""

import gc

# Off until torch and diffusers are imported (see safeloader.worker.serve.run_worker).
gc.disable()

from safeloader.sandbox.inworker import finish_confinement  # noqa: E402

CONFINEMENT_LAYERS = finish_confinement()

from safeloader.worker.serve import run_worker  # noqa: E402 - must come after confinement

raise SystemExit(run_worker(CONFINEMENT_LAYERS))
