"""A digital-twin surrogate: learn a damped oscillator's response x(t) from its parameters.

The physical system (physics.py) generates the data offline; the network (model.py) learns to replace it; the
datamodule (data.py) reads the splits the simulation step wrote."""
