def _host_emptyCache() -> None:
    return None
