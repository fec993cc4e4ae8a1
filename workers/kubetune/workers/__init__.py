"""Code that runs inside kubetune pods: the trainer and the adapter server."""
