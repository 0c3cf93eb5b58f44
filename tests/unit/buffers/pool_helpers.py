"""Module-level targets for spawned children of the pool tests (they import this module by
name: multiprocessing hands them the parent's ``sys.path``). The name is specific so that
no other test folder's helpers shadow it."""

from __future__ import annotations


def echo_sum(jobs, results) -> None:  # type: ignore[no-untyped-def]
    """Receive an array by handle, send back its sum and a loaned array of its own."""

    arr = jobs.get(timeout=30)
    out = results.loan_array(arr.shape, arr.dtype)
    out[:] = arr * 2
    results.put((int(arr.sum()), out))
