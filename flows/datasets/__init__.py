"""The bundled datasets: one spec each (``<name>.yaml``), with its SQLMesh models under
``transforms/models/<name>/``, and the code a dataset ships with (such as a generator of its
file drops). The only place outside the specs and models that may name a dataset."""

# What ``--dataset`` means when a command is not given one.
DEFAULT_DATASET = "flights"
