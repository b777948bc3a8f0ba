"""The backend's host queries: free memory."""

import builtins
import os

from gls_np import backend


def test_free_memory_reads_meminfo_and_falls_back_to_sysconf(monkeypatch):
    assert backend.free_memory_bytes() > 0
    real_open = builtins.open

    def no_proc(path, *args, **kw):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kw)

    monkeypatch.setattr(builtins, "open", no_proc)
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert backend.free_memory_bytes() == 1000 * 4096
