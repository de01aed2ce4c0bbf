"""Optional integrations with training libraries, imported only when used.

* :mod:`replaykit.integrations.sb3`: Stable-Baselines3 (``pip install "replaykit[sb3]"``).
* :mod:`replaykit.integrations.minari`: export to a Minari dataset
  (``pip install "replaykit[minari]"``).

Importing :mod:`replaykit` imports none of these libraries.
"""

__all__: list[str] = []
