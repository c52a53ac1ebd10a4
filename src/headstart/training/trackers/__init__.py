"""One module per experiment tracker; headstart.config.trackers.TRACKERS names them for run.log."""
