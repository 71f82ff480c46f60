"""The local stack: an S3 API (moto), an MLflow server and a two-node Ray cluster on this machine.

`lic stack up|down|status` (`lic.stack.local`) runs them for a shell session; the tests start the same servers
through `lic.stack.services`, so the command lines and health checks exist once.
"""
