"""The one exception type for bad user input.

A `JaxgenError` carries a single sentence that names what the user must fix
(a config key, a missing file, a workdir without a checkpoint). The CLI prints
it without a traceback and exits with status 2. Raise it before any work or
any write, so that a failed run leaves earlier results untouched.
"""


class JaxgenError(Exception):
  """Bad input from the user; the message is one sentence naming the fix."""
