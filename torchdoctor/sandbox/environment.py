"""The environment a job sees: built from an allow-list, never inherited wholesale.

The service holds secrets in its own environment (OPENAI_API_KEY, database URLs, tokens); a job
must see none of them. Only the names below pass from the service's environment, then the job's
own variables (already checked for secret-looking names by `Job`) and the fixed variables the
sandbox sets for the job are added.
"""

from __future__ import annotations

from collections.abc import Mapping

INHERITED = frozenset(
    {
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "CUDA_DEVICE_ORDER",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
)

JOB_USER = "sandbox"
"""The user name every job sees (USER, LOGNAME)."""


def job_environment(
    host: Mapping[str, str],
    requested: Mapping[str, str],
    *,
    home: str,
    path: str,
    tmpdir: str,
) -> dict[str, str]:
    """Allow-listed host variables, then the job's own, then the sandbox's fixed settings."""
    env = {name: value for name, value in host.items() if name in INHERITED}
    env.update(requested)
    env.update(
        {
            "PATH": path,
            "HOME": home,
            "TMPDIR": tmpdir,
            "USER": JOB_USER,
            "LOGNAME": JOB_USER,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "XDG_CACHE_HOME": f"{home}/.cache",
            "MPLCONFIGDIR": f"{home}/.cache/matplotlib",
        }
    )
    return env
