"""Generic pretraining of the paired model: offline photographs -> synthetic depot-like pairs -> a base model.

``sources`` finds the photographs, ``synth`` makes one labelled pair from one of them, ``corpus`` writes a
split-by-photograph folder dataset, ``pretrain`` trains the ``base`` preset on it and registers the version.
"""
