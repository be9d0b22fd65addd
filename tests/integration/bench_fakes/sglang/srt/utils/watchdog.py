class SubprocessWatchdog:
    def stop(self) -> None:
        self.stopped = True
